#include "diffusion/tokenizer.h"

#include <ATen/ATen.h>
#include <dlfcn.h>
// Only for sizeof/alignof of the processor object: no function declared here is called directly (that would
// link libsentencepiece into the global symbol scope, see tokenizer.h).
#include <sentencepiece_processor.h>

#include <cctype>
#include <fstream>
#include <new>
#include <stdexcept>
#include <string_view>

namespace reel {

namespace {

// Layout-compatible stand-in for sentencepiece::util::Status (one unique_ptr to its state; null = OK).
// It has a non-trivial destructor like the real one, so it is returned the same way (hidden pointer).
struct RawStatus {
    void* rep = nullptr;
    ~RawStatus();
    bool ok() const { return rep == nullptr; }
    std::string message() const;
};
static_assert(sizeof(RawStatus) == sizeof(sentencepiece::util::Status), "util::Status layout changed");

// Entry points, by their Itanium-mangled names. A member function called through a plain function pointer
// takes `this` as its first argument (after the hidden return pointer), which is how these are typed.
struct SentencePieceApi {
    void* lib = nullptr;
    void (*construct)(void* self) = nullptr;
    void (*destroy)(void* self) = nullptr;
    RawStatus (*load)(void* self, std::string_view path) = nullptr;
    RawStatus (*encode)(const void* self, std::string_view text, std::vector<int>* ids) = nullptr;
    RawStatus (*decode)(const void* self, const std::vector<int>& ids, std::string* text) = nullptr;
    int (*piece_size)(const void* self) = nullptr;
    int (*eos_id)(const void* self) = nullptr;
    int (*pad_id)(const void* self) = nullptr;
    void (*status_destroy)(RawStatus* self) = nullptr;
    std::string (*status_string)(const RawStatus* self) = nullptr;
};

void* open_isolated(const char* name) {
    void* h = dlopen(name, RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
    if (!h)
        throw std::runtime_error(std::string("tokenizer: cannot load ") + name + ": " + dlerror());
    return h;
}

template <typename F>
void bind(void* lib, F& fn, const char* symbol) {
    void* p = dlsym(lib, symbol);
    if (!p)
        throw std::runtime_error(std::string("tokenizer: libsentencepiece lacks ") + symbol);
    fn = reinterpret_cast<F>(p);
}

const SentencePieceApi& api() {
    static const SentencePieceApi a = [] {
        SentencePieceApi s;
        s.lib = open_isolated("libsentencepiece.so.0");
        bind(s.lib, s.construct, "_ZN13sentencepiece22SentencePieceProcessorC1Ev");
        bind(s.lib, s.destroy, "_ZN13sentencepiece22SentencePieceProcessorD1Ev");
        bind(s.lib, s.load,
             "_ZN13sentencepiece22SentencePieceProcessor4LoadESt17basic_string_viewIcSt11char_traitsIcEE");
        bind(s.lib, s.encode,
             "_ZNK13sentencepiece22SentencePieceProcessor6EncodeESt17basic_string_viewIcSt11char_"
             "traitsIcEEPSt6vectorIiSaIiEE");
        bind(s.lib, s.decode,
             "_ZNK13sentencepiece22SentencePieceProcessor6DecodeERKSt6vectorIiSaIiEEPNSt7__cxx1112basic_"
             "stringIcSt11char_"
             "traitsIcESaIcEEE");
        bind(s.lib, s.piece_size, "_ZNK13sentencepiece22SentencePieceProcessor12GetPieceSizeEv");
        bind(s.lib, s.eos_id, "_ZNK13sentencepiece22SentencePieceProcessor6eos_idEv");
        bind(s.lib, s.pad_id, "_ZNK13sentencepiece22SentencePieceProcessor6pad_idEv");
        bind(s.lib, s.status_destroy, "_ZN13sentencepiece4util6StatusD1Ev");
        bind(s.lib, s.status_string, "_ZNK13sentencepiece4util6Status8ToStringB5cxx11Ev");
        return s;
    }();
    return a;
}

RawStatus::~RawStatus() {
    if (rep)
        api().status_destroy(this);
}

std::string RawStatus::message() const {
    return ok() ? "OK" : api().status_string(this);
}

}  // namespace

// Raw storage for the library's SentencePieceProcessor, constructed and destroyed through the library.
struct Tokenizer::Processor {
    alignas(sentencepiece::SentencePieceProcessor) unsigned char storage[sizeof(sentencepiece::SentencePieceProcessor)];
    Processor() { api().construct(storage); }
    ~Processor() { api().destroy(storage); }
    Processor(const Processor&) = delete;
    Processor& operator=(const Processor&) = delete;
    void* get() { return storage; }
    const void* get() const { return storage; }
};

Tokenizer::Tokenizer() : sp_(std::make_unique<Processor>()) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

Tokenizer Tokenizer::load(const std::string& path) {
    if (!std::ifstream(path, std::ios::binary))
        throw std::runtime_error("tokenizer: cannot open " + path + " (expected a SentencePiece .model file)");
    Tokenizer t;
    const RawStatus status = api().load(t.sp_->get(), path);
    if (!status.ok())
        throw std::runtime_error("tokenizer: " + path + " is not a valid SentencePiece model: " + status.message());
    // umT5's model has pad 0 and EOS 1; models without those ids fall back to the same values.
    const int eos = api().eos_id(t.sp_->get()), pad = api().pad_id(t.sp_->get());
    t.eos_id_ = eos >= 0 ? eos : 1;
    t.pad_id_ = pad >= 0 ? pad : 0;
    return t;
}

std::string Tokenizer::clean(const std::string& text) {
    std::string out;
    bool space = false;
    for (unsigned char c : text) {
        if (std::isspace(c)) {
            space = !out.empty();
            continue;
        }
        if (space)
            out.push_back(' ');
        space = false;
        out.push_back(char(c));
    }
    return out;
}

std::vector<int> Tokenizer::encode(const std::string& text) const {
    std::vector<int> ids;
    const std::string cleaned = clean(text);
    const RawStatus status = api().encode(sp_->get(), cleaned, &ids);
    if (!status.ok())
        throw std::runtime_error("tokenizer: cannot encode text: " + status.message());
    ids.push_back(eos_id_);
    return ids;
}

TokenBatch Tokenizer::pad(const std::vector<int>& ids_in, int text_len) const {
    if (text_len <= 0)
        throw std::runtime_error("tokenizer: text_len must be positive");
    std::vector<int> ids = ids_in;
    if (int(ids.size()) > text_len) {
        // Keep the EOS the encoder was trained to see at the end.
        ids.resize(size_t(text_len));
        ids.back() = eos_id_;
    }
    TokenBatch b;
    b.length = int64_t(ids.size());
    b.ids = at::full({1, text_len}, pad_id_, at::kLong);
    b.mask = at::zeros({1, text_len}, at::kLong);
    int64_t* pi = b.ids.data_ptr<int64_t>();
    int64_t* pm = b.mask.data_ptr<int64_t>();
    for (size_t i = 0; i < ids.size(); ++i) {
        pi[i] = ids[i];
        pm[i] = 1;
    }
    return b;
}

TokenBatch Tokenizer::tokenize(const std::string& text, int text_len) const {
    return pad(encode(text), text_len);
}

std::string Tokenizer::decode(const std::vector<int>& ids) const {
    std::vector<int> keep;
    for (int id : ids)
        if (id != eos_id_ && id != pad_id_)
            keep.push_back(id);
    std::string text;
    const RawStatus status = api().decode(sp_->get(), keep, &text);
    if (!status.ok())
        throw std::runtime_error("tokenizer: cannot decode ids: " + status.message());
    return text;
}

int Tokenizer::vocab_size() const {
    return api().piece_size(sp_->get());
}

}  // namespace reel
