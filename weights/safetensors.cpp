#include "weights/safetensors.h"

#include <ATen/ATen.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <stdexcept>

#include "weights/mapped_file.h"

namespace reel {

namespace {

// The reference implementation refuses headers above 100 MB; real headers are a few hundred KB.
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

struct DtypeEntry {
    const char* name;
    c10::ScalarType type;
};

const DtypeEntry kDtypes[] = {
    {"F32", at::kFloat}, {"F16", at::kHalf},  {"BF16", at::kBFloat16}, {"F64", at::kDouble}, {"I64", at::kLong},
    {"I32", at::kInt},   {"I16", at::kShort}, {"I8", at::kChar},       {"U8", at::kByte},    {"BOOL", at::kBool},
};

bool find_dtype(const std::string& name, c10::ScalarType* out) {
    for (const auto& d : kDtypes) {
        if (name == d.name) {
            *out = d.type;
            return true;
        }
    }
    return false;
}

uint64_t read_u64_le(const uint8_t* p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

// Validates the JSON header against the size of the data section (file size - 8 - N).
std::vector<TensorInfo> parse_header(const std::string& path,
                                     const char* header,
                                     uint64_t header_len,
                                     uint64_t file_size,
                                     std::map<std::string, std::string>* metadata) {
    const std::string where = "safetensors file " + path + ": ";
    const uint64_t data_start = 8 + header_len;
    const uint64_t data_size = file_size - data_start;
    nlohmann::json j;
    try {
        j = nlohmann::json::parse(header, header + header_len);
    } catch (const std::exception& e) {
        throw std::runtime_error(where + "header is not valid JSON (" + e.what() + ")");
    }
    if (!j.is_object())
        throw std::runtime_error(where + "header is not a JSON object");

    std::vector<TensorInfo> infos;
    std::vector<std::pair<uint64_t, uint64_t>> ranges;  // [begin, end) relative to data_start, per info
    for (auto it = j.begin(); it != j.end(); ++it) {
        const std::string& name = it.key();
        const nlohmann::json& v = it.value();
        if (name == "__metadata__") {
            if (!v.is_object())
                throw std::runtime_error(where + "__metadata__ is not an object");
            for (auto m = v.begin(); m != v.end(); ++m) {
                if (!m.value().is_string())
                    throw std::runtime_error(where + "__metadata__ value for '" + m.key() + "' is not a string");
                if (metadata)
                    (*metadata)[m.key()] = m.value().get<std::string>();
            }
            continue;
        }
        const std::string tw = where + "tensor '" + name + "': ";
        if (!v.is_object())
            throw std::runtime_error(tw + "entry is not an object");
        if (!v.contains("dtype") || !v["dtype"].is_string())
            throw std::runtime_error(tw + "missing or non-string \"dtype\"");
        if (!v.contains("shape") || !v["shape"].is_array())
            throw std::runtime_error(tw + "missing or non-array \"shape\"");
        if (!v.contains("data_offsets") || !v["data_offsets"].is_array() || v["data_offsets"].size() != 2)
            throw std::runtime_error(tw + "\"data_offsets\" must be an array [begin, end]");

        TensorInfo info;
        info.name = name;
        info.dtype = v["dtype"].get<std::string>();
        c10::ScalarType st;
        if (!find_dtype(info.dtype, &st))
            throw std::runtime_error(tw + "unknown dtype '" + info.dtype + "'");
        const nlohmann::json& shape = v["shape"];
        if (shape.size() > 64)
            throw std::runtime_error(tw + "too many dimensions (" + std::to_string(shape.size()) + ")");
        uint64_t numel = 1;
        for (const auto& d : shape) {
            if (!d.is_number_integer() || d.get<int64_t>() < 0)
                throw std::runtime_error(tw + "shape " + shape.dump() + " has a non-integer or negative dimension");
            int64_t dim = d.get<int64_t>();
            info.shape.push_back(dim);
            if (__builtin_mul_overflow(numel, (uint64_t)dim, &numel))
                throw std::runtime_error(tw + "shape " + shape.dump() + " overflows");
        }
        uint64_t nbytes;
        if (__builtin_mul_overflow(numel, (uint64_t)c10::elementSize(st), &nbytes))
            throw std::runtime_error(tw + "shape " + shape.dump() + " overflows");
        const nlohmann::json& off = v["data_offsets"];
        if (!off[0].is_number_unsigned() || !off[1].is_number_unsigned())
            throw std::runtime_error(tw + "data_offsets " + off.dump() + " are not non-negative integers");
        uint64_t begin = off[0].get<uint64_t>(), end = off[1].get<uint64_t>();
        if (begin > end)
            throw std::runtime_error(tw + "data_offsets " + off.dump() + " have begin > end");
        if (end > data_size)
            throw std::runtime_error(tw + "data_offsets " + off.dump() + " run past the end of the data (" +
                                     std::to_string(data_size) + " bytes; truncated file?)");
        if (end - begin != nbytes)
            throw std::runtime_error(tw + "data_offsets " + off.dump() + " span " + std::to_string(end - begin) +
                                     " bytes but dtype " + info.dtype + " shape " + shape.dump() + " needs " +
                                     std::to_string(nbytes));
        info.offset = data_start + begin;
        info.nbytes = nbytes;
        infos.push_back(info);
        ranges.push_back({begin, end});
    }

    // Overlapping tensors would alias each other's memory: refuse them.
    std::vector<size_t> order(infos.size());
    for (size_t i = 0; i < order.size(); i++)
        order[i] = i;
    std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return ranges[a] < ranges[b]; });
    size_t prev = SIZE_MAX;
    for (size_t i : order) {
        if (ranges[i].first == ranges[i].second)
            continue;  // empty tensors take no bytes
        if (prev != SIZE_MAX && ranges[i].first < ranges[prev].second)
            throw std::runtime_error(where + "tensors '" + infos[prev].name + "' and '" + infos[i].name +
                                     "' have overlapping data_offsets");
        prev = i;
    }
    std::sort(infos.begin(), infos.end(), [](const TensorInfo& a, const TensorInfo& b) { return a.name < b.name; });
    return infos;
}

// Checks the 8-byte length prefix against the file size before anything is allocated from it.
uint64_t checked_header_len(const std::string& path, const uint8_t* first8, uint64_t file_size) {
    const std::string where = "safetensors file " + path + ": ";
    if (file_size < 8)
        throw std::runtime_error(where + "file is " + std::to_string(file_size) +
                                 " bytes, too short for the 8-byte header length");
    uint64_t n = read_u64_le(first8);
    if (n == 0)
        throw std::runtime_error(where + "header length is 0");
    if (n > file_size - 8)
        throw std::runtime_error(where + "header length " + std::to_string(n) + " is larger than the file (" +
                                 std::to_string(file_size) + " bytes; truncated or not a safetensors file)");
    if (n > kMaxHeaderBytes)
        throw std::runtime_error(where + "header length " + std::to_string(n) + " exceeds the 100 MB limit");
    return n;
}

}  // namespace

std::string safetensors_dtype_name(c10::ScalarType dtype) {
    for (const auto& d : kDtypes)
        if (d.type == dtype)
            return d.name;
    throw std::runtime_error(std::string("safetensors: unsupported dtype ") + c10::toString(dtype));
}

c10::ScalarType safetensors_dtype(const std::string& name) {
    c10::ScalarType st;
    if (!find_dtype(name, &st))
        throw std::runtime_error("safetensors: unknown dtype '" + name + "'");
    return st;
}

std::vector<TensorInfo> read_safetensors_header(const std::string& path, std::map<std::string, std::string>* metadata) {
    std::ifstream in(path, std::ios::binary | std::ios::ate);
    if (!in) {
        std::ifstream probe(path);
        throw std::runtime_error((probe ? "cannot open " : "checkpoint file not found: ") + path);
    }
    uint64_t file_size = (uint64_t)in.tellg();
    in.seekg(0);
    uint8_t first8[8] = {0};
    in.read(reinterpret_cast<char*>(first8), std::min<uint64_t>(8, file_size));
    uint64_t n = checked_header_len(path, first8, file_size);
    std::string header((size_t)n, '\0');
    in.read(&header[0], (std::streamsize)n);
    if ((uint64_t)in.gcount() != n)
        throw std::runtime_error("safetensors file " + path + ": could not read the " + std::to_string(n) +
                                 "-byte header");
    return parse_header(path, header.data(), n, file_size, metadata);
}

TensorMap load_safetensors(const std::string& path) {
    auto file = MappedFile::open(path);
    uint64_t n = checked_header_len(path, file->data(), file->size());
    auto infos = parse_header(path, reinterpret_cast<const char*>(file->data()) + 8, n, file->size(), nullptr);
    TensorMap out;
    for (const auto& info : infos) {
        c10::ScalarType st = safetensors_dtype(info.dtype);
        int64_t numel = (int64_t)(info.nbytes / c10::elementSize(st));
        out[info.name] = tensor_from_mapping(file, info.offset, numel, st).view(info.shape);
    }
    return out;
}

void save_safetensors(const std::string& path,
                      const TensorMap& tensors,
                      const std::map<std::string, std::string>& metadata) {
    struct Item {
        std::string name;
        at::Tensor t;
        size_t itemsize;
    };
    std::vector<Item> items;
    for (const auto& kv : tensors) {
        if (!kv.second.defined())
            throw std::runtime_error("save_safetensors " + path + ": tensor '" + kv.first + "' is undefined");
        at::Tensor t = kv.second.detach().to(at::kCPU).contiguous();
        safetensors_dtype_name(t.scalar_type());  // throws early for unsupported dtypes
        items.push_back({kv.first, t, (size_t)t.element_size()});
    }
    // Largest itemsize first: every tensor then starts at a multiple of its own itemsize.
    std::stable_sort(items.begin(), items.end(), [](const Item& a, const Item& b) { return a.itemsize > b.itemsize; });

    nlohmann::json header = nlohmann::json::object();
    if (!metadata.empty())
        header["__metadata__"] = metadata;
    uint64_t pos = 0;
    for (const auto& it : items) {
        uint64_t nbytes = (uint64_t)it.t.numel() * it.itemsize;
        header[it.name] = {{"dtype", safetensors_dtype_name(it.t.scalar_type())},
                           {"shape", it.t.sizes().vec()},
                           {"data_offsets", {pos, pos + nbytes}}};
        pos += nbytes;
    }
    std::string h = header.dump();
    h.append((8 - h.size() % 8) % 8, ' ');

    std::string tmp = path + ".tmp-" + std::to_string(getpid());
    {
        std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
        if (!out)
            throw std::runtime_error("save_safetensors: cannot create " + tmp);
        uint8_t len[8];
        uint64_t n = h.size();
        for (int i = 0; i < 8; i++)
            len[i] = (uint8_t)(n >> (8 * i));
        out.write(reinterpret_cast<const char*>(len), 8);
        out.write(h.data(), (std::streamsize)h.size());
        for (const auto& it : items)
            out.write(static_cast<const char*>(it.t.data_ptr()), (std::streamsize)(it.t.numel() * it.itemsize));
        out.flush();
        if (!out) {
            out.close();
            std::remove(tmp.c_str());
            throw std::runtime_error("save_safetensors: write to " + tmp + " failed (disk full?)");
        }
    }
    if (std::rename(tmp.c_str(), path.c_str()) != 0) {
        int err = errno;
        std::remove(tmp.c_str());
        throw std::runtime_error("save_safetensors: cannot rename " + tmp + " to " + path + ": " + std::strerror(err));
    }
}

}  // namespace reel
