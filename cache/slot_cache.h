// The slot store behind every cache policy (see kv_cache.h for the interface and cache_spec.h for the policies).
//
// Per layer there are two pools of slots, each with one occupancy per (batch, head) stream:
//   fp    [streams, cap, D] keys and values in the model dtype: the chunk being generated, recent frames, and
//         everything when no quantization is asked;
//   quant pages of G slots [streams, pages, G, bytes] plus float16 scales: entries old enough to be quantized
//         are moved there G at a time (KIVI's per-channel key scales need a page of tokens).
// Each slot has its metadata (first and last frame it stands for, spatial token, multiplicity, weight). Pools grow
// by doubling until they reach the policy's capacity (window, byte or frame budget); after that, nothing is
// reallocated: eviction frees slots and new entries reuse them, lowest slot first.
#pragma once
#include <memory>

#include "cache/cache_spec.h"
#include "cache/kv_cache.h"

namespace reel {

std::unique_ptr<KVCache> make_slot_cache(const CacheSpec& spec, int num_layers);

}  // namespace reel
