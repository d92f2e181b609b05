#include "weights/torch_pickle.h"

#include <ATen/ATen.h>

#include <cstring>
#include <functional>
#include <memory>
#include <stdexcept>
#include <unordered_map>

#include "weights/mapped_file.h"
#include "weights/safetensors.h"
#include "weights/zip_reader.h"

namespace reel {

namespace {

// ---- the unpickled object model: just what a checkpoint's structure needs ------------------------

enum class Kind { None, Bool, Int, BigInt, Float, Str, Bytes, Tuple, List, Dict, Global, Storage, Tensor };

const char* kind_name(Kind k) {
    switch (k) {
        case Kind::None:
            return "None";
        case Kind::Bool:
            return "bool";
        case Kind::Int:
            return "int";
        case Kind::BigInt:
            return "int";
        case Kind::Float:
            return "float";
        case Kind::Str:
            return "str";
        case Kind::Bytes:
            return "bytes";
        case Kind::Tuple:
            return "tuple";
        case Kind::List:
            return "list";
        case Kind::Dict:
            return "dict";
        case Kind::Global:
            return "global";
        case Kind::Storage:
            return "storage";
        case Kind::Tensor:
            return "tensor";
    }
    return "?";
}

// A tensor as the pickle describes it; its data is only read when the tensor is materialized.
struct TensorSpec {
    std::string storage_key;
    c10::ScalarType dtype = at::kFloat;
    int64_t storage_numel = 0;
    int64_t offset = 0;
    std::vector<int64_t> size, stride;
};

struct Obj;
using ObjPtr = std::shared_ptr<Obj>;

struct Obj {
    Kind kind = Kind::None;
    int64_t i = 0;  // Bool, Int
    double f = 0;
    std::string s;              // Str, Bytes, Global ("module.name"), Storage (key)
    std::vector<ObjPtr> items;  // Tuple, List
    std::vector<std::pair<ObjPtr, ObjPtr>> dict;
    std::unordered_map<std::string, size_t> str_index;  // Dict: str key -> position in `dict`
    c10::ScalarType dtype = at::kFloat;                 // Storage
    int64_t numel = 0;                                  // Storage
    TensorSpec tensor;

    explicit Obj(Kind k) : kind(k) {}
};

ObjPtr make(Kind k) {
    return std::make_shared<Obj>(k);
}

// torch.<Name>Storage -> dtype; these globals are only ever type tags in persistent ids.
bool storage_dtype(const std::string& global, c10::ScalarType* out) {
    static const std::pair<const char*, c10::ScalarType> table[] = {
        {"torch.FloatStorage", at::kFloat},       {"torch.HalfStorage", at::kHalf},
        {"torch.BFloat16Storage", at::kBFloat16}, {"torch.DoubleStorage", at::kDouble},
        {"torch.LongStorage", at::kLong},         {"torch.IntStorage", at::kInt},
        {"torch.ShortStorage", at::kShort},       {"torch.CharStorage", at::kChar},
        {"torch.ByteStorage", at::kByte},         {"torch.BoolStorage", at::kBool},
    };
    for (const auto& e : table) {
        if (global == e.first) {
            *out = e.second;
            return true;
        }
    }
    return false;
}

bool global_allowed(const std::string& g) {
    static const char* allowed[] = {
        "collections.OrderedDict",
        "torch._utils._rebuild_tensor",
        "torch._utils._rebuild_tensor_v2",
        "torch._utils._rebuild_parameter",
        "torch._utils._rebuild_parameter_with_state",
        "torch._tensor._rebuild_from_type_v2",
        "torch.Tensor",
        "torch.nn.parameter.Parameter",
    };
    for (const char* a : allowed)
        if (g == a)
            return true;
    c10::ScalarType st;
    return storage_dtype(g, &st);
}

// ---- restricted unpickler ------------------------------------------------------------------------

class Unpickler {
  public:
    // `data` must outlive the unpickler; `what` names the file (and the pickle) in errors.
    Unpickler(const std::string& path, const uint8_t* data, uint64_t size, uint64_t pos)
        : path_(path), d_(data), size_(size), pos_(pos) {}

    // Runs one pickle up to its STOP and returns the result; pos() is then just past the STOP.
    ObjPtr load();
    uint64_t pos() const { return pos_; }
    // Every storage referenced so far: key -> (dtype, numel).
    const std::map<std::string, std::pair<c10::ScalarType, int64_t>>& storages() const { return storages_; }

  private:
    [[noreturn]] void fail(const std::string& msg) const {
        throw std::runtime_error("cannot load " + path_ + ": " + msg + " (pickle offset " + std::to_string(op_pos_) +
                                 ")");
    }
    const uint8_t* take(uint64_t n) {
        if (n > size_ - pos_)
            fail("pickle data ends unexpectedly (truncated or corrupt file)");
        const uint8_t* p = d_ + pos_;
        pos_ += n;
        return p;
    }
    uint64_t read_le(int n) {
        const uint8_t* p = take((uint64_t)n);
        uint64_t v = 0;
        for (int i = n - 1; i >= 0; i--)
            v = (v << 8) | p[i];
        return v;
    }
    std::string read_line() {
        uint64_t start = pos_;
        while (pos_ < size_ && d_[pos_] != '\n')
            pos_++;
        if (pos_ >= size_)
            fail("pickle data ends unexpectedly in a GLOBAL (truncated or corrupt file)");
        std::string s(reinterpret_cast<const char*>(d_ + start), (size_t)(pos_ - start));
        pos_++;
        return s;
    }
    ObjPtr pop() {
        if (stack_.size() <= (marks_.empty() ? 0 : marks_.back()))
            fail("pickle stack underflow (corrupt file)");
        ObjPtr o = stack_.back();
        stack_.pop_back();
        return o;
    }
    ObjPtr& top() {
        if (stack_.empty())
            fail("pickle stack underflow (corrupt file)");
        return stack_.back();
    }
    std::vector<ObjPtr> pop_to_mark() {
        if (marks_.empty())
            fail("pickle MARK missing (corrupt file)");
        size_t m = marks_.back();
        marks_.pop_back();
        std::vector<ObjPtr> items(stack_.begin() + (std::ptrdiff_t)m, stack_.end());
        stack_.resize(m);
        return items;
    }
    ObjPtr make_global(const std::string& module, const std::string& name) {
        std::string g = module + "." + name;
        if (!global_allowed(g))
            throw std::runtime_error("refusing to load " + path_ + ": global '" + g +
                                     "' is not allowed (only tensors, dicts and plain values are read; nothing is "
                                     "executed)");
        ObjPtr o = make(Kind::Global);
        o->s = g;
        return o;
    }
    void set_item(const ObjPtr& dict, const ObjPtr& key, const ObjPtr& value) {
        if (dict->kind != Kind::Dict)
            fail(std::string("SETITEM on a ") + kind_name(dict->kind));
        if (key->kind == Kind::Str) {
            auto it = dict->str_index.find(key->s);
            if (it != dict->str_index.end()) {
                dict->dict[it->second].second = value;
                return;
            }
            dict->str_index[key->s] = dict->dict.size();
        }
        dict->dict.push_back({key, value});
    }
    ObjPtr call(const ObjPtr& callable, const ObjPtr& args, int depth = 0);
    ObjPtr persistent_load(const ObjPtr& pid);

    std::string path_;
    const uint8_t* d_;
    uint64_t size_;
    uint64_t pos_;
    uint64_t op_pos_ = 0;
    std::vector<ObjPtr> stack_;
    std::vector<size_t> marks_;
    std::unordered_map<uint64_t, ObjPtr> memo_;
    std::map<std::string, std::pair<c10::ScalarType, int64_t>> storages_;
};

int64_t as_int(const ObjPtr& o, const char* what, const std::function<void(const std::string&)>& fail) {
    if (o->kind != Kind::Int && o->kind != Kind::Bool)
        fail(std::string(what) + " is a " + kind_name(o->kind) + ", expected an int");
    return o->i;
}

std::vector<int64_t> as_int_tuple(const ObjPtr& o,
                                  const char* what,
                                  const std::function<void(const std::string&)>& fail) {
    if (o->kind != Kind::Tuple && o->kind != Kind::List)
        fail(std::string(what) + " is a " + kind_name(o->kind) + ", expected a tuple of ints");
    std::vector<int64_t> v;
    for (const auto& e : o->items)
        v.push_back(as_int(e, what, fail));
    return v;
}

ObjPtr Unpickler::persistent_load(const ObjPtr& pid) {
    // torch.save: ('storage', torch.<T>Storage, key, location, numel); the legacy format adds a sixth
    // element, view_metadata, which is None for everything written since 2018.
    if (pid->kind != Kind::Tuple || pid->items.size() < 5 || pid->items[0]->kind != Kind::Str ||
        pid->items[0]->s != "storage")
        fail("unsupported persistent id (only tensor storages are supported)");
    const auto& it = pid->items;
    c10::ScalarType dtype;
    if (it[1]->kind != Kind::Global || !storage_dtype(it[1]->s, &dtype))
        fail("persistent id does not name a known storage type");
    if (it[2]->kind != Kind::Str && it[2]->kind != Kind::Int)
        fail("storage key is not a string");
    std::string key = it[2]->kind == Kind::Str ? it[2]->s : std::to_string(it[2]->i);
    auto failf = [this](const std::string& m) { fail(m); };
    int64_t numel = as_int(it[4], "storage size", failf);
    if (numel < 0)
        fail("storage '" + key + "' has negative size");
    if (it.size() >= 6 && it[5]->kind != Kind::None)
        fail("storage '" + key + "' is a legacy storage view, which is not supported");
    auto prev = storages_.find(key);
    if (prev != storages_.end() && (prev->second.first != dtype || prev->second.second != numel))
        fail("storage '" + key + "' is referenced with two different types or sizes");
    storages_[key] = {dtype, numel};
    ObjPtr o = make(Kind::Storage);
    o->s = key;
    o->dtype = dtype;
    o->numel = numel;
    return o;
}

ObjPtr Unpickler::call(const ObjPtr& callable, const ObjPtr& args, int depth) {
    if (callable->kind != Kind::Global)
        fail(std::string("REDUCE on a ") + kind_name(callable->kind) + " (corrupt file)");
    if (args->kind != Kind::Tuple)
        fail("REDUCE arguments are not a tuple (corrupt file)");
    const std::string& g = callable->s;
    const auto& a = args->items;
    auto failf = [this](const std::string& m) { fail(m); };
    if (g == "collections.OrderedDict") {
        ObjPtr d = make(Kind::Dict);
        if (!a.empty() && a[0]->kind == Kind::List) {
            for (const auto& pair : a[0]->items)
                if (pair->kind == Kind::Tuple && pair->items.size() == 2)
                    set_item(d, pair->items[0], pair->items[1]);
        }
        return d;
    }
    if (g == "torch._utils._rebuild_tensor_v2" || g == "torch._utils._rebuild_tensor") {
        // (storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
        if (a.size() < 4 || a[0]->kind != Kind::Storage)
            fail(g + " called with unexpected arguments");
        ObjPtr t = make(Kind::Tensor);
        t->tensor.storage_key = a[0]->s;
        t->tensor.dtype = a[0]->dtype;
        t->tensor.storage_numel = a[0]->numel;
        t->tensor.offset = as_int(a[1], "storage offset", failf);
        t->tensor.size = as_int_tuple(a[2], "tensor size", failf);
        t->tensor.stride = as_int_tuple(a[3], "tensor stride", failf);
        const TensorSpec& s = t->tensor;
        if (s.size.size() != s.stride.size())
            fail("tensor size and stride have different lengths");
        if (s.size.size() > 64)
            fail("tensor has too many dimensions");
        // The view must lie inside its storage, or as_strided would read out of bounds.
        if (s.offset < 0)
            fail("negative storage offset");
        bool empty = false;
        for (size_t k = 0; k < s.size.size(); k++) {
            if (s.size[k] < 0 || s.stride[k] < 0)
                fail("negative tensor size or stride");
            if (s.size[k] == 0)
                empty = true;
        }
        if (!empty) {
            int64_t last = s.offset;
            for (size_t k = 0; k < s.size.size(); k++) {
                int64_t span;
                if (__builtin_mul_overflow(s.size[k] - 1, s.stride[k], &span) ||
                    __builtin_add_overflow(last, span, &last))
                    fail("tensor view overflows");
            }
            if (last >= s.storage_numel)
                fail("tensor view (offset " + std::to_string(s.offset) + ") reaches element " + std::to_string(last) +
                     " of storage '" + s.storage_key + "' which has " + std::to_string(s.storage_numel) + " elements");
        }
        return t;
    }
    if (g == "torch._utils._rebuild_parameter" || g == "torch._utils._rebuild_parameter_with_state") {
        if (a.empty() || a[0]->kind != Kind::Tensor)
            fail(g + " called with unexpected arguments");
        return a[0];  // a Parameter is its data; requires_grad and hooks don't matter for inference
    }
    if (g == "torch._tensor._rebuild_from_type_v2") {
        // (func, new_type, args, state): the tensor is func(*args); the subclass type is dropped.
        if (a.size() < 3 || a[2]->kind != Kind::Tuple)
            fail(g + " called with unexpected arguments");
        if (depth > 8)
            fail(g + " nested too deeply");
        return call(a[0], a[2], depth + 1);
    }
    fail("global '" + g + "' cannot be called");
}

ObjPtr Unpickler::load() {
    stack_.clear();
    marks_.clear();
    memo_.clear();
    while (true) {
        op_pos_ = pos_;
        uint8_t op = *take(1);
        switch (op) {
            case 0x80:  // PROTO
                if (*take(1) > 5)
                    fail("unsupported pickle protocol");
                break;
            case 0x95:  // FRAME: only a read-ahead hint
                take(8);
                break;
            case '.': {  // STOP
                ObjPtr r = pop();
                return r;
            }
            case '(':  // MARK
                marks_.push_back(stack_.size());
                break;
            case '0':  // POP
                pop();
                break;
            case '1':  // POP_MARK
                pop_to_mark();
                break;
            case '2':  // DUP
                stack_.push_back(top());
                break;
            case 'N':
                stack_.push_back(make(Kind::None));
                break;
            case 0x88:    // NEWTRUE
            case 0x89: {  // NEWFALSE
                ObjPtr o = make(Kind::Bool);
                o->i = op == 0x88;
                stack_.push_back(o);
                break;
            }
            case 'J': {  // BININT
                ObjPtr o = make(Kind::Int);
                o->i = (int32_t)(uint32_t)read_le(4);
                stack_.push_back(o);
                break;
            }
            case 'K':    // BININT1
            case 'M': {  // BININT2
                ObjPtr o = make(Kind::Int);
                o->i = (int64_t)read_le(op == 'K' ? 1 : 2);
                stack_.push_back(o);
                break;
            }
            case 0x8a:    // LONG1
            case 0x8b: {  // LONG4
                uint64_t n = read_le(op == 0x8a ? 1 : 4);
                const uint8_t* p = take(n);
                ObjPtr o = make(Kind::Int);
                if (n > 8) {
                    o->kind = Kind::BigInt;  // only the legacy magic number; never used as a size
                } else if (n > 0) {
                    uint64_t v = 0;
                    for (int k = (int)n - 1; k >= 0; k--)
                        v = (v << 8) | p[k];
                    if (n < 8 && (p[n - 1] & 0x80))  // sign-extend
                        v |= ~0ull << (8 * n);
                    o->i = (int64_t)v;
                }
                stack_.push_back(o);
                break;
            }
            case 'G': {  // BINFLOAT, big-endian
                const uint8_t* p = take(8);
                uint64_t v = 0;
                for (int k = 0; k < 8; k++)
                    v = (v << 8) | p[k];
                ObjPtr o = make(Kind::Float);
                std::memcpy(&o->f, &v, 8);
                stack_.push_back(o);
                break;
            }
            case 'X':     // BINUNICODE
            case 0x8c:    // SHORT_BINUNICODE
            case 0x8d:    // BINUNICODE8
            case 'B':     // BINBYTES
            case 'C':     // SHORT_BINBYTES
            case 0x8e: {  // BINBYTES8
                int width = (op == 0x8c || op == 'C') ? 1 : (op == 0x8d || op == 0x8e) ? 8 : 4;
                uint64_t n = read_le(width);
                const uint8_t* p = take(n);  // checks n against the remaining bytes before any allocation
                ObjPtr o = make((op == 'B' || op == 'C' || op == 0x8e) ? Kind::Bytes : Kind::Str);
                o->s.assign(reinterpret_cast<const char*>(p), (size_t)n);
                stack_.push_back(o);
                break;
            }
            case '}':  // EMPTY_DICT
                stack_.push_back(make(Kind::Dict));
                break;
            case ']':  // EMPTY_LIST
                stack_.push_back(make(Kind::List));
                break;
            case ')':  // EMPTY_TUPLE
                stack_.push_back(make(Kind::Tuple));
                break;
            case 't':    // TUPLE
            case 'l': {  // LIST
                ObjPtr o = make(op == 't' ? Kind::Tuple : Kind::List);
                o->items = pop_to_mark();
                stack_.push_back(o);
                break;
            }
            case 0x85:    // TUPLE1
            case 0x86:    // TUPLE2
            case 0x87: {  // TUPLE3
                ObjPtr o = make(Kind::Tuple);
                o->items.resize(op - 0x84);
                for (size_t k = o->items.size(); k-- > 0;)
                    o->items[k] = pop();
                stack_.push_back(o);
                break;
            }
            case 'd': {  // DICT
                auto items = pop_to_mark();
                if (items.size() % 2)
                    fail("DICT with an odd number of items");
                ObjPtr d = make(Kind::Dict);
                for (size_t k = 0; k < items.size(); k += 2)
                    set_item(d, items[k], items[k + 1]);
                stack_.push_back(d);
                break;
            }
            case 's': {  // SETITEM
                ObjPtr v = pop();
                ObjPtr k = pop();
                set_item(top(), k, v);
                break;
            }
            case 'u': {  // SETITEMS
                auto items = pop_to_mark();
                if (items.size() % 2)
                    fail("SETITEMS with an odd number of items");
                ObjPtr d = top();
                for (size_t k = 0; k < items.size(); k += 2)
                    set_item(d, items[k], items[k + 1]);
                break;
            }
            case 'a': {  // APPEND
                ObjPtr v = pop();
                ObjPtr& l = top();
                if (l->kind != Kind::List)
                    fail(std::string("APPEND on a ") + kind_name(l->kind));
                l->items.push_back(v);
                break;
            }
            case 'e': {  // APPENDS
                auto items = pop_to_mark();
                ObjPtr& l = top();
                if (l->kind != Kind::List)
                    fail(std::string("APPENDS on a ") + kind_name(l->kind));
                l->items.insert(l->items.end(), items.begin(), items.end());
                break;
            }
            case 'q':  // BINPUT
            case 'r':  // LONG_BINPUT
                memo_[read_le(op == 'q' ? 1 : 4)] = top();
                break;
            case 0x94:  // MEMOIZE
                memo_[memo_.size()] = top();
                break;
            case 'h':    // BINGET
            case 'j': {  // LONG_BINGET
                auto it = memo_.find(read_le(op == 'h' ? 1 : 4));
                if (it == memo_.end())
                    fail("pickle memo key missing (corrupt file)");
                stack_.push_back(it->second);
                break;
            }
            case 'c': {  // GLOBAL "module\nname\n"
                std::string module = read_line();
                std::string name = read_line();
                stack_.push_back(make_global(module, name));
                break;
            }
            case 0x93: {  // STACK_GLOBAL
                ObjPtr name = pop();
                ObjPtr module = pop();
                if (module->kind != Kind::Str || name->kind != Kind::Str)
                    fail("STACK_GLOBAL arguments are not strings");
                stack_.push_back(make_global(module->s, name->s));
                break;
            }
            case 'R':     // REDUCE
            case 0x81: {  // NEWOBJ
                ObjPtr args = pop();
                ObjPtr callable = pop();
                stack_.push_back(call(callable, args));
                break;
            }
            case 'b':  // BUILD: object state (e.g. a state dict's _metadata); irrelevant to tensors
                pop();
                top();
                break;
            case 'Q': {  // BINPERSID
                ObjPtr pid = pop();
                stack_.push_back(persistent_load(pid));
                break;
            }
            default: {
                char buf[8];
                std::snprintf(buf, sizeof(buf), "0x%02x", op);
                fail(std::string("unsupported pickle opcode ") + buf + " (not a torch.save checkpoint, or corrupt)");
            }
        }
    }
}

// ---- walking the unpickled structure --------------------------------------------------------------

std::string key_string(const ObjPtr& k, bool* ok) {
    *ok = true;
    if (k->kind == Kind::Str)
        return k->s;
    if (k->kind == Kind::Int || k->kind == Kind::Bool)
        return std::to_string(k->i);
    *ok = false;
    return "";
}

// Objects shared through the memo can make a tiny pickle describe an exponentially large tree
// ([x, x] nested 60 times), so the walk is bounded in depth and in the number of nodes visited.
struct Walk {
    std::vector<std::pair<std::string, const TensorSpec*>> out;
    std::vector<std::string>* skipped = nullptr;
    uint64_t visits = 0;
};

void collect(const ObjPtr& o, const std::string& name, int depth, Walk& w) {
    if (depth > 64)
        throw std::runtime_error("checkpoint nests deeper than 64 levels (corrupt or cyclic structure)");
    if (++w.visits > 1000000)
        throw std::runtime_error("checkpoint structure has more than a million entries (corrupt or malicious)");
    auto& out = w.out;
    auto* skipped = w.skipped;
    auto child = [&](const std::string& k) { return name.empty() ? k : name + "/" + k; };
    switch (o->kind) {
        case Kind::Tensor:
            out.push_back({name.empty() ? std::string("tensor") : name, &o->tensor});
            break;
        case Kind::Dict:
            for (const auto& kv : o->dict) {
                bool ok;
                std::string k = key_string(kv.first, &ok);
                if (!ok) {
                    if (skipped)
                        skipped->push_back(child("?") + " (" + kind_name(kv.first->kind) + " key)");
                    continue;
                }
                collect(kv.second, child(k), depth + 1, w);
            }
            break;
        case Kind::List:
        case Kind::Tuple:
            for (size_t k = 0; k < o->items.size(); k++)
                collect(o->items[k], child(std::to_string(k)), depth + 1, w);
            break;
        default:
            if (skipped)
                skipped->push_back(name + " (" + kind_name(o->kind) + ")");
    }
}

// A parsed checkpoint: the root object and a way to get each storage's data.
struct Parsed {
    ObjPtr root;
    std::shared_ptr<MappedFile> file;
    std::function<at::Tensor(const TensorSpec&)> storage;  // 1-D tensor of the whole storage
};

// Pickle written as the first bytes of a legacy file: PROTO 2, LONG1 of the 10-byte magic number, STOP.
const uint8_t kLegacyMagic[] = {0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46,
                                0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e};

Parsed parse_zip(const std::string& path, const std::shared_ptr<MappedFile>& file) {
    auto zip = std::make_shared<ZipReader>(file);
    // torch.save names the top folder after the file ("archive/" in newer versions); find data.pkl.
    std::string prefix;
    bool found = false;
    for (const auto& kv : zip->entries()) {
        const std::string& n = kv.first;
        const std::string tail = "data.pkl";
        if (n == tail || (n.size() > tail.size() && n.compare(n.size() - tail.size(), tail.size(), tail) == 0 &&
                          n[n.size() - tail.size() - 1] == '/')) {
            std::string p = n.substr(0, n.size() - tail.size());
            if (!found || p.size() < prefix.size())
                prefix = p;
            found = true;
        }
    }
    if (!found)
        throw std::runtime_error("cannot load " + path + ": zip archive has no data.pkl (not a torch.save checkpoint)");
    if (zip->has(prefix + "byteorder")) {
        const ZipEntry& e = zip->entry(prefix + "byteorder");
        std::string order(reinterpret_cast<const char*>(zip->bytes(e)), (size_t)e.size);
        if (order != "little")
            throw std::runtime_error("cannot load " + path + ": byte order '" + order + "' is not supported");
    }
    const ZipEntry& pkl = zip->entry(prefix + "data.pkl");
    Unpickler up(path, zip->bytes(pkl), pkl.size, 0);
    Parsed p;
    p.root = up.load();
    p.file = file;
    p.storage = [zip, prefix, path](const TensorSpec& s) {
        const ZipEntry& e = zip->entry(prefix + "data/" + s.storage_key);
        uint64_t nbytes;
        if (__builtin_mul_overflow((uint64_t)s.storage_numel, (uint64_t)c10::elementSize(s.dtype), &nbytes) ||
            nbytes > e.size)
            throw std::runtime_error("cannot load " + path + ": storage '" + s.storage_key + "' holds " +
                                     std::to_string(e.size) + " bytes but the pickle expects " +
                                     std::to_string(s.storage_numel) + " elements of " + c10::toString(s.dtype));
        return tensor_from_mapping(zip->file(), e.offset, s.storage_numel, s.dtype);
    };
    return p;
}

// Legacy (torch < 1.6) layout: pickles of the magic number, the protocol version and the system info,
// the object pickle, the pickle of the sorted storage keys, then per key an int64 element count and the
// raw bytes.
Parsed parse_legacy(const std::string& path, const std::shared_ptr<MappedFile>& file, bool with_data) {
    const uint8_t* d = file->data();
    uint64_t size = file->size();
    if (size < sizeof(kLegacyMagic) || std::memcmp(d, kLegacyMagic, sizeof(kLegacyMagic)) != 0)
        throw std::runtime_error("cannot load " + path + ": not a legacy torch.save file (magic number missing)");
    Unpickler up(path, d, size, sizeof(kLegacyMagic));
    ObjPtr version = up.load();
    if (version->kind != Kind::Int || version->i != 1001)
        throw std::runtime_error("cannot load " + path + ": unsupported legacy torch.save protocol version");
    ObjPtr sys_info = up.load();
    if (sys_info->kind == Kind::Dict) {
        for (const auto& kv : sys_info->dict)
            if (kv.first->kind == Kind::Str && kv.first->s == "little_endian" && kv.second->kind == Kind::Bool &&
                !kv.second->i)
                throw std::runtime_error("cannot load " + path + ": big-endian legacy checkpoints are not supported");
    }
    Parsed p;
    p.root = up.load();
    p.file = file;
    if (!with_data)
        return p;
    auto storages = up.storages();
    ObjPtr keys = up.load();
    if (keys->kind != Kind::List)
        throw std::runtime_error("cannot load " + path + ": legacy storage key list missing (corrupt file)");
    auto where = std::make_shared<std::map<std::string, uint64_t>>();  // key -> offset of the data
    uint64_t pos = up.pos();
    for (const auto& k : keys->items) {
        if (k->kind != Kind::Str)
            throw std::runtime_error("cannot load " + path + ": legacy storage key is not a string");
        auto st = storages.find(k->s);
        if (st == storages.end())
            throw std::runtime_error("cannot load " + path + ": legacy storage '" + k->s + "' is not referenced");
        uint64_t nbytes = (uint64_t)st->second.second * c10::elementSize(st->second.first);
        if (size - pos < 8)
            throw std::runtime_error("cannot load " + path + ": legacy file ends before storage '" + k->s +
                                     "' (truncated)");
        uint64_t numel = 0;
        for (int b = 7; b >= 0; b--)
            numel = (numel << 8) | d[pos + b];
        if (numel != (uint64_t)st->second.second)
            throw std::runtime_error("cannot load " + path + ": legacy storage '" + k->s + "' has " +
                                     std::to_string(numel) + " elements, the pickle says " +
                                     std::to_string(st->second.second));
        pos += 8;
        if (size - pos < nbytes)
            throw std::runtime_error("cannot load " + path + ": legacy file ends inside storage '" + k->s +
                                     "' (truncated)");
        (*where)[k->s] = pos;
        pos += nbytes;
    }
    p.storage = [where, file, path](const TensorSpec& s) {
        auto it = where->find(s.storage_key);
        if (it == where->end())
            throw std::runtime_error("cannot load " + path + ": storage '" + s.storage_key + "' has no data");
        return tensor_from_mapping(file, it->second, s.storage_numel, s.dtype);
    };
    return p;
}

Parsed parse_checkpoint(const std::string& path, bool with_data) {
    auto file = MappedFile::open(path);
    const uint8_t* d = file->data();
    uint64_t size = file->size();
    if (size >= 4 && d[0] == 'P' && d[1] == 'K' && (d[2] == 3 || d[2] == 5) && (d[3] == 4 || d[3] == 6))
        return parse_zip(path, file);
    if (size >= sizeof(kLegacyMagic) && std::memcmp(d, kLegacyMagic, sizeof(kLegacyMagic)) == 0)
        return parse_legacy(path, file, with_data);
    if (size >= 262 && std::memcmp(d + 257, "ustar", 5) == 0)
        throw std::runtime_error("cannot load " + path +
                                 ": the legacy tar torch.save format (torch < 0.4) is not supported; re-save it");
    throw std::runtime_error("cannot load " + path + ": not a torch.save checkpoint (neither zip nor legacy format)");
}

// The object under top-level key `group`, or the root when `group` is empty.
ObjPtr select_group(const std::string& path, const ObjPtr& root, const std::string& group) {
    if (group.empty())
        return root;
    if (root->kind == Kind::Dict) {
        for (const auto& kv : root->dict)
            if (kv.first->kind == Kind::Str && kv.first->s == group)
                return kv.second;
    }
    throw std::runtime_error("cannot load " + path + ": checkpoint has no top-level entry '" + group + "'");
}

}  // namespace

TensorMap load_torch_checkpoint(const std::string& path, const std::string& group, std::vector<std::string>* skipped) {
    Parsed p = parse_checkpoint(path, true);
    Walk w;
    w.skipped = skipped;
    collect(select_group(path, p.root, group), "", 0, w);
    const auto& specs = w.out;
    // Each storage is mapped once; views of one storage share it.
    std::map<std::string, at::Tensor> storages;
    TensorMap out;
    for (const auto& ns : specs) {
        const TensorSpec& s = *ns.second;
        auto it = storages.find(s.storage_key);
        if (it == storages.end())
            it = storages.emplace(s.storage_key, p.storage(s)).first;
        out[ns.first] = it->second.as_strided(s.size, s.stride, s.offset);
    }
    return out;
}

std::vector<TorchTensorEntry> list_torch_checkpoint(const std::string& path) {
    Parsed p = parse_checkpoint(path, false);
    Walk w;
    collect(p.root, "", 0, w);
    const auto& specs = w.out;
    std::vector<TorchTensorEntry> out;
    for (const auto& ns : specs) {
        const TensorSpec& s = *ns.second;
        TorchTensorEntry e;
        e.name = ns.first;
        e.dtype = safetensors_dtype_name(s.dtype);
        e.shape = s.size;
        uint64_t numel = 1;
        for (int64_t v : s.size)
            numel *= (uint64_t)v;
        e.nbytes = numel * c10::elementSize(s.dtype);
        out.push_back(e);
    }
    return out;
}

}  // namespace reel
