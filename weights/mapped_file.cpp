#include "weights/mapped_file.h"

#include <ATen/ATen.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <stdexcept>

namespace reel {

std::shared_ptr<MappedFile> MappedFile::open(const std::string& path) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int err = errno;
        if (err == ENOENT)
            throw std::runtime_error("checkpoint file not found: " + path);
        throw std::runtime_error("cannot open " + path + ": " + std::strerror(err));
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int err = errno;
        ::close(fd);
        throw std::runtime_error("cannot stat " + path + ": " + std::strerror(err));
    }
    if (S_ISDIR(st.st_mode)) {
        ::close(fd);
        throw std::runtime_error("cannot read " + path + ": it is a directory");
    }
    if (st.st_size <= 0) {
        ::close(fd);
        throw std::runtime_error("cannot read " + path + ": the file is empty");
    }
    // MAP_PRIVATE + PROT_WRITE: tensors over the mapping may be modified in place (copy-on-write)
    // without ever touching the file.
    void* p = mmap(nullptr, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    int err = errno;
    ::close(fd);  // the mapping keeps its own reference to the file
    if (p == MAP_FAILED)
        throw std::runtime_error("cannot map " + path + ": " + std::strerror(err));
    std::shared_ptr<MappedFile> f(new MappedFile());
    f->path_ = path;
    f->data_ = static_cast<uint8_t*>(p);
    f->size_ = (uint64_t)st.st_size;
    return f;
}

MappedFile::~MappedFile() {
    if (data_)
        munmap(data_, (size_t)size_);
}

at::Tensor tensor_from_mapping(const std::shared_ptr<MappedFile>& file,
                               uint64_t offset,
                               int64_t numel,
                               c10::ScalarType dtype) {
    auto options = at::TensorOptions().dtype(dtype).device(at::kCPU);
    uint8_t* ptr = const_cast<uint8_t*>(file->data()) + offset;
    size_t itemsize = c10::elementSize(dtype);
    if (numel == 0)
        return at::empty({0}, options);
    if (reinterpret_cast<uintptr_t>(ptr) % itemsize != 0) {
        // Misaligned data (legacy .pth, odd safetensors): kernels assume natural alignment, so copy.
        at::Tensor t = at::empty({numel}, options);
        std::memcpy(t.data_ptr(), ptr, (size_t)numel * itemsize);
        return t;
    }
    std::shared_ptr<MappedFile> keep = file;
    return at::from_blob(
        ptr, {numel}, [keep](void*) mutable { keep.reset(); }, options);
}

std::vector<uint8_t> read_file_head(const std::string& path, size_t n) {
    struct stat st;
    if (stat(path.c_str(), &st) != 0) {
        int err = errno;
        if (err == ENOENT)
            throw std::runtime_error("checkpoint file not found: " + path);
        throw std::runtime_error("cannot open " + path + ": " + std::strerror(err));
    }
    if (S_ISDIR(st.st_mode))
        throw std::runtime_error("cannot read " + path + ": it is a directory");
    std::ifstream in(path, std::ios::binary);
    if (!in)
        throw std::runtime_error("cannot open " + path + ": " + std::strerror(errno));
    std::vector<uint8_t> buf(n);
    in.read(reinterpret_cast<char*>(buf.data()), (std::streamsize)n);
    buf.resize((size_t)in.gcount());
    return buf;
}

}  // namespace reel
