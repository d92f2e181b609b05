// SentencePiece tokenizer for the umT5 text encoder (google/umt5-xxl `spiece.model`), umT5 style: the prompt's
// whitespace collapsed, its pieces, then EOS; padded with the pad id to the encoder's text length.
//
// Debian's libsentencepiece exports a bundled protobuf-lite 3.14 whose symbols clash with the libprotobuf 3.21
// that LibTorch loads (linking both crashes at start-up, in protobuf's static initializers). So the library is
// never linked: it is dlopen'ed with RTLD_LOCAL | RTLD_DEEPBIND on first use and called through a handful of
// dlsym'ed entry points (see tokenizer.cpp). The trainer cannot run that way (with DEEPBIND its logging hits an
// unconstructed std::cerr), so models are trained out of process (tests/data/tokenizer/README.md).
#pragma once
#include <ATen/core/Tensor.h>

#include <memory>
#include <string>
#include <vector>

namespace reel {

struct TokenBatch {
    at::Tensor ids;      // [1, text_len] int64
    at::Tensor mask;     // [1, text_len] int64, 1 for real tokens (incl. EOS), 0 for padding
    int64_t length = 0;  // number of real tokens
};

class Tokenizer {
  public:
    // Throws std::runtime_error naming the path when the file is missing or not a SentencePiece model.
    static Tokenizer load(const std::string& path);

    Tokenizer(Tokenizer&&) noexcept;
    Tokenizer& operator=(Tokenizer&&) noexcept;
    ~Tokenizer();

    // Pieces of the whitespace-cleaned text, then EOS.
    std::vector<int> encode(const std::string& text) const;
    // ids -> [1, text_len] ids + mask; longer inputs are truncated to text_len - 1 pieces + EOS.
    TokenBatch pad(const std::vector<int>& ids, int text_len) const;
    // encode + pad
    TokenBatch tokenize(const std::string& text, int text_len) const;
    // ids -> text (EOS / pad dropped)
    std::string decode(const std::vector<int>& ids) const;

    int vocab_size() const;
    int eos_id() const { return eos_id_; }
    int pad_id() const { return pad_id_; }

    // Collapses every run of whitespace into one space and trims both ends (the reference's whitespace_clean).
    static std::string clean(const std::string& text);

  private:
    struct Processor;  // owns the library's SentencePieceProcessor
    Tokenizer();
    std::unique_ptr<Processor> sp_;
    int eos_id_ = 1;
    int pad_id_ = 0;
};

}  // namespace reel
