// Reader for torch.save checkpoints (.pt / .pth), written without Python and without executing
// anything: a small zip reader plus a restricted unpickler that understands the opcodes torch.save
// emits and resolves only an allow-list of globals (OrderedDict, the tensor/parameter rebuild
// functions, the typed storage classes). Any other global is refused with an error that names it.
// The legacy (pre-1.6, non-zip) format is read too; the even older tar format is refused.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "weights/tensor_map.h"

namespace reel {

struct TorchTensorEntry {
    std::string name;   // nested dict levels joined by '/'
    std::string dtype;  // safetensors spelling: "F32", "BF16", ...
    std::vector<int64_t> shape;
    uint64_t nbytes = 0;  // of the tensor itself (a view may share a larger storage)
};

// Every tensor of the checkpoint, nested dict (and list) levels joined by '/', e.g.
// "generator/model.blocks.0.self_attn.q.weight"; a plain or OrderedDict state dict gives plain names.
// Tensors that are views of one storage share it (as_strided on the storage); each storage is read
// once (mmapped, copy-on-write). Non-tensor leaves (ints, strings, ...) are skipped and, when
// `skipped` is given, reported there as "name (kind)". With a non-empty `group`, only the tensors
// under the top-level key `group` are returned, without that prefix (storages of the other groups
// are never touched). Throws std::runtime_error naming the file and the problem.
TensorMap load_torch_checkpoint(const std::string& path,
                                const std::string& group = "",
                                std::vector<std::string>* skipped = nullptr);

// The tensors of the checkpoint (names as above) without reading their data.
std::vector<TorchTensorEntry> list_torch_checkpoint(const std::string& path);

}  // namespace reel
