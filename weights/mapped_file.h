// A read-only view of a whole file through mmap, shared by every tensor built on top of it.
// Tensors made with at::from_blob over the mapping hold a shared_ptr to it, so the mapping lives
// exactly as long as the last tensor that points into it; nothing is copied and pages that are
// never touched (e.g. the critic in a training checkpoint) are never read from disk.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace reel {

class MappedFile {
  public:
    // Throws std::runtime_error naming the file for a missing, unreadable or empty file.
    static std::shared_ptr<MappedFile> open(const std::string& path);
    ~MappedFile();
    MappedFile(const MappedFile&) = delete;
    MappedFile& operator=(const MappedFile&) = delete;

    const uint8_t* data() const { return data_; }
    uint64_t size() const { return size_; }
    const std::string& path() const { return path_; }

  private:
    MappedFile() = default;
    std::string path_;
    uint8_t* data_ = nullptr;
    uint64_t size_ = 0;
};

// A 1-D tensor of `numel` elements of `dtype` over bytes [offset, offset + numel * itemsize) of the
// file. The caller has checked the range. The tensor aliases the mapping (copy-on-write, so in-place
// ops are safe and never reach the file) when the address is aligned for the dtype, and is a copy
// otherwise.
at::Tensor tensor_from_mapping(const std::shared_ptr<MappedFile>& file,
                               uint64_t offset,
                               int64_t numel,
                               c10::ScalarType dtype);

// Reads the first `n` bytes of a file (fewer if the file is shorter); throws if it can't be opened.
std::vector<uint8_t> read_file_head(const std::string& path, size_t n);

}  // namespace reel
