// A minimal reader for the zip archives torch.save writes: entries are stored (not compressed) and
// 64-byte aligned, so each entry is just a byte range of the (mmapped) file. Handles the central
// directory, data descriptors and ZIP64; refuses compressed entries with a clear message.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "weights/mapped_file.h"

namespace reel {

struct ZipEntry {
    std::string name;
    uint64_t offset = 0;  // absolute offset of the entry's bytes in the file
    uint64_t size = 0;
    uint16_t method = 0;  // 0 = stored
};

class ZipReader {
  public:
    // Parses the central directory; throws std::runtime_error naming the file when it is not a zip,
    // truncated (no end-of-central-directory record) or inconsistent.
    explicit ZipReader(std::shared_ptr<MappedFile> file);

    const std::map<std::string, ZipEntry>& entries() const { return entries_; }
    bool has(const std::string& name) const { return entries_.count(name) != 0; }
    // The entry, checked to be stored (uncompressed) and inside the file.
    const ZipEntry& entry(const std::string& name) const;
    const uint8_t* bytes(const ZipEntry& e) const { return file_->data() + e.offset; }
    const std::shared_ptr<MappedFile>& file() const { return file_; }

  private:
    std::shared_ptr<MappedFile> file_;
    std::map<std::string, ZipEntry> entries_;
};

}  // namespace reel
