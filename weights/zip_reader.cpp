#include "weights/zip_reader.h"

#include <stdexcept>

namespace reel {

namespace {

constexpr uint32_t kLocalSig = 0x04034b50;
constexpr uint32_t kCentralSig = 0x02014b50;
constexpr uint32_t kEndSig = 0x06054b50;
constexpr uint32_t kEnd64Sig = 0x06064b50;
constexpr uint32_t kEnd64LocatorSig = 0x07064b50;

uint64_t le(const uint8_t* p, int n) {
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

}  // namespace

ZipReader::ZipReader(std::shared_ptr<MappedFile> file) : file_(std::move(file)) {
    const uint8_t* d = file_->data();
    const uint64_t size = file_->size();
    const std::string where = "zip archive " + file_->path() + ": ";

    // The end-of-central-directory record is the last 22 bytes plus a comment of up to 64 KiB.
    if (size < 22)
        throw std::runtime_error(where + "file too short (" + std::to_string(size) + " bytes; truncated?)");
    uint64_t eocd = UINT64_MAX;
    uint64_t lowest = size >= 22 + 65535 ? size - 22 - 65535 : 0;
    for (uint64_t p = size - 22 + 1; p-- > lowest;) {
        if (le(d + p, 4) == kEndSig && p + 22 + le(d + p + 20, 2) <= size) {
            eocd = p;
            break;
        }
    }
    if (eocd == UINT64_MAX)
        throw std::runtime_error(where + "no end-of-central-directory record (truncated or corrupt file)");

    uint64_t count = le(d + eocd + 10, 2);
    uint64_t cd_size = le(d + eocd + 12, 4);
    uint64_t cd_offset = le(d + eocd + 16, 4);
    if (count == 0xFFFF || cd_size == 0xFFFFFFFF || cd_offset == 0xFFFFFFFF) {
        // ZIP64: a locator just before the record points at the 64-bit end record.
        if (eocd < 20 || le(d + eocd - 20, 4) != kEnd64LocatorSig)
            throw std::runtime_error(where + "ZIP64 end-of-central-directory locator missing");
        uint64_t rec = le(d + eocd - 20 + 8, 8);
        if (size < 56 || rec > size - 56 || le(d + rec, 4) != kEnd64Sig)
            throw std::runtime_error(where + "ZIP64 end-of-central-directory record missing or out of range");
        count = le(d + rec + 32, 8);
        cd_size = le(d + rec + 40, 8);
        cd_offset = le(d + rec + 48, 8);
    }
    if (cd_offset > size || cd_size > size - cd_offset)
        throw std::runtime_error(where + "central directory lies outside the file (truncated or corrupt file)");

    uint64_t p = cd_offset;
    const uint64_t cd_end = cd_offset + cd_size;
    for (uint64_t i = 0; i < count; i++) {
        if (p + 46 > cd_end || le(d + p, 4) != kCentralSig)
            throw std::runtime_error(where + "central directory entry " + std::to_string(i) + " is corrupt");
        ZipEntry e;
        e.method = (uint16_t)le(d + p + 10, 2);
        uint64_t csize = le(d + p + 20, 4);
        uint64_t usize = le(d + p + 24, 4);
        uint64_t name_len = le(d + p + 28, 2), extra_len = le(d + p + 30, 2), comment_len = le(d + p + 32, 2);
        uint64_t local = le(d + p + 42, 4);
        if (p + 46 + name_len + extra_len + comment_len > cd_end)
            throw std::runtime_error(where + "central directory entry " + std::to_string(i) + " is corrupt");
        e.name.assign(reinterpret_cast<const char*>(d + p + 46), (size_t)name_len);
        // ZIP64 extra field: the 64-bit values of exactly those fields that are saturated above.
        const uint8_t* x = d + p + 46 + name_len;
        const uint8_t* xend = x + extra_len;
        while (x + 4 <= xend) {
            uint64_t id = le(x, 2), len = le(x + 2, 2);
            if (x + 4 + len > xend)
                break;
            if (id == 0x0001) {
                const uint8_t* f = x + 4;
                const uint8_t* fend = f + len;
                if (usize == 0xFFFFFFFF && f + 8 <= fend) {
                    usize = le(f, 8);
                    f += 8;
                }
                if (csize == 0xFFFFFFFF && f + 8 <= fend) {
                    csize = le(f, 8);
                    f += 8;
                }
                if (local == 0xFFFFFFFF && f + 8 <= fend)
                    local = le(f, 8);
            }
            x += 4 + len;
        }
        p += 46 + name_len + extra_len + comment_len;

        // The data starts after the local header, whose name/extra lengths may differ from the central ones.
        if (local > size || size - local < 30 || le(d + local, 4) != kLocalSig)
            throw std::runtime_error(where + "local header of '" + e.name + "' is missing (truncated or corrupt file)");
        uint64_t data = local + 30 + le(d + local + 26, 2) + le(d + local + 28, 2);
        e.size = e.method == 0 ? usize : csize;
        if (e.method == 0 && csize != usize)
            throw std::runtime_error(where + "stored entry '" + e.name + "' has different compressed and plain sizes");
        if (data > size || e.size > size - data)
            throw std::runtime_error(where + "entry '" + e.name + "' runs past the end of the file (truncated?)");
        e.offset = data;
        entries_[e.name] = e;
    }
}

const ZipEntry& ZipReader::entry(const std::string& name) const {
    auto it = entries_.find(name);
    if (it == entries_.end())
        throw std::runtime_error("zip archive " + file_->path() + ": entry '" + name + "' is missing");
    if (it->second.method != 0)
        throw std::runtime_error("zip archive " + file_->path() + ": entry '" + name + "' is compressed (method " +
                                 std::to_string(it->second.method) + (it->second.method == 8 ? ", deflate" : "") +
                                 "); only stored entries, as torch.save writes them, are supported");
    return it->second;
}

}  // namespace reel
