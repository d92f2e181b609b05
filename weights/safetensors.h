// safetensors reader/writer: u64 little-endian header length N, N bytes of JSON
// {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}},
// then raw little-endian C-order data (offsets are relative to the first byte after the header).
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "weights/tensor_map.h"

namespace reel {

struct TensorInfo {
    std::string name;
    std::string dtype;  // "F32", "F16", "BF16", "F64", "I64", "I32", "I16", "I8", "U8", "BOOL"
    std::vector<int64_t> shape;
    uint64_t offset = 0;  // absolute byte offset of the data in the file
    uint64_t nbytes = 0;
};

// Reads and validates the header only (the tensor data is never read): header length sane against
// the file size, JSON valid, dtypes known, shapes non-negative, nbytes == numel * itemsize, offsets
// inside the data section and not overlapping. Nothing is allocated from an unvalidated size.
// Entries come sorted by name. Throws std::runtime_error naming the file and the problem.
std::vector<TensorInfo> read_safetensors_header(const std::string& path,
                                                std::map<std::string, std::string>* metadata = nullptr);

// Loads every tensor. The file is mmapped once and the tensors alias the mapping (copy-on-write),
// so a large file is neither read twice nor copied; the mapping is released with the last tensor.
TensorMap load_safetensors(const std::string& path);

// Writes contiguous CPU copies of the tensors (largest itemsize first so every tensor is naturally
// aligned), the header space-padded to a multiple of 8. Writes `path`.tmp-<pid> and renames it over
// `path`, so a failure never leaves a truncated file behind.
void save_safetensors(const std::string& path,
                      const TensorMap& tensors,
                      const std::map<std::string, std::string>& metadata = {});

// "F32" <-> at::kFloat etc. Throws for dtypes safetensors (or LibTorch 1.13) can't represent.
std::string safetensors_dtype_name(c10::ScalarType dtype);
c10::ScalarType safetensors_dtype(const std::string& name);

}  // namespace reel
