// Tokenizer behaviour beyond the reference ids: streaming decode, malformed metadata, end-of-
// generation tokens, and encode speed.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <iostream>

#include "core/error.h"
#include "gguf/gguf.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"

namespace qleap {
namespace {

std::string fixture(const std::string& name) {
  const char* e = std::getenv("QLEAP_SOURCE_DIR");
#ifdef QLEAP_SOURCE_DIR
  const std::string root = e ? e : QLEAP_SOURCE_DIR;
#else
  const std::string root = e ? e : ".";
#endif
  return root + "/tests/fixtures/tokenizer/" + name;
}

Tokenizer load(const std::string& name) {
  return Tokenizer::from_gguf(*GgufFile::open(fixture(name)));
}

bool valid_utf8(const std::string& s) {
  for (size_t i = 0; i < s.size();) {
    size_t len = 1;
    const uint32_t cp = utf8_decode(s.data() + i, s.size() - i, len);
    if (len == 1 && uint8_t(s[i]) >= 0x80) return false;
    (void)cp;
    i += len;
  }
  return true;
}

// Minimal GGUF v3 writer for metadata-only files.
class GgufBuilder {
 public:
  void str(const std::string& key, const std::string& v) {
    key_(key, 8);
    s_(v);
    ++n_;
  }
  void boolean(const std::string& key, bool v) {
    key_(key, 7);
    const uint8_t b = v ? 1 : 0;
    raw(&b, 1);
    ++n_;
  }
  void u32(const std::string& key, uint32_t v) {
    key_(key, 4);
    raw(&v, 4);
    ++n_;
  }
  void strs(const std::string& key, const std::vector<std::string>& v) {
    key_(key, 9);
    arr_head(8, v.size());
    for (const auto& s : v) s_(s);
    ++n_;
  }
  void i32s(const std::string& key, const std::vector<int32_t>& v) {
    key_(key, 9);
    arr_head(5, v.size());
    for (int32_t x : v) raw(&x, 4);
    ++n_;
  }
  void f32s(const std::string& key, const std::vector<float>& v) {
    key_(key, 9);
    arr_head(6, v.size());
    for (float x : v) raw(&x, 4);
    ++n_;
  }
  std::vector<uint8_t> bytes() const {
    std::vector<uint8_t> out = {'G', 'G', 'U', 'F'};
    const uint32_t version = 3;
    const uint64_t n_tensors = 0, n_kv = n_;
    auto put = [&](const void* p, size_t n) {
      const auto* b = static_cast<const uint8_t*>(p);
      out.insert(out.end(), b, b + n);
    };
    put(&version, 4);
    put(&n_tensors, 8);
    put(&n_kv, 8);
    out.insert(out.end(), body_.begin(), body_.end());
    return out;
  }

 private:
  void raw(const void* p, size_t n) {
    const auto* b = static_cast<const uint8_t*>(p);
    body_.insert(body_.end(), b, b + n);
  }
  void s_(const std::string& s) {
    const uint64_t n = s.size();
    raw(&n, 8);
    raw(s.data(), s.size());
  }
  void key_(const std::string& k, uint32_t type) {
    s_(k);
    raw(&type, 4);
  }
  void arr_head(uint32_t elem, uint64_t n) {
    raw(&elem, 4);
    raw(&n, 8);
  }
  std::vector<uint8_t> body_;
  uint64_t n_ = 0;
};

// GPT-2's byte -> character mapping, written out independently of the tokenizer.
std::string byte_char(uint8_t byte) {
  uint32_t next = 256;
  for (uint32_t b = 0; b < 256; ++b) {
    const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
    const uint32_t cp = printable ? b : next++;
    if (b == byte) {
      std::string s;
      utf8_append(cp, s);
      return s;
    }
  }
  return {};
}

// A tiny valid byte-level vocabulary: the 256 byte characters plus "ab" from the merge "a b".
struct TinyBpe {
  std::vector<std::string> tokens;
  std::vector<int32_t> types;
  TinyBpe() {
    uint32_t next = 256;
    for (uint32_t b = 0; b < 256; ++b) {
      const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
      std::string s;
      utf8_append(printable ? b : next++, s);
      tokens.push_back(s);
      types.push_back(1);
    }
    tokens.push_back("ab");
    types.push_back(1);
    tokens.push_back("<|end|>");
    types.push_back(3);
  }
};

Tokenizer from_builder(const GgufBuilder& b, std::vector<uint8_t>& keep) {
  keep = b.bytes();
  return Tokenizer::from_gguf(*GgufFile::parse(keep.data(), keep.size()));
}

TEST(TokenizerUnit, TinyBpeFromMemoryWorks) {
  TinyBpe t;
  GgufBuilder b;
  b.str("tokenizer.ggml.model", "gpt2");
  b.strs("tokenizer.ggml.tokens", t.tokens);
  b.i32s("tokenizer.ggml.token_type", t.types);
  b.strs("tokenizer.ggml.merges", {"a b"});
  b.u32("tokenizer.ggml.eos_token_id", 257);
  std::vector<uint8_t> keep;
  const Tokenizer tok = from_builder(b, keep);
  EXPECT_EQ(tok.encode("abc", false, true), (std::vector<int32_t>{256, int32_t('c')}));
  EXPECT_EQ(tok.encode("ab<|end|>", false, true), (std::vector<int32_t>{256, 257}));
  EXPECT_EQ(tok.decode({256, 257}, false), "ab<|end|>");
  EXPECT_EQ(tok.decode({256, 257}, true), "ab");
  EXPECT_TRUE(tok.is_eog(257));
  EXPECT_EQ(tok.eos(), 257);
  EXPECT_EQ(tok.bos(), -1);
  EXPECT_FALSE(tok.wants_bos());
  EXPECT_NE(tok.warning().find("missing"), std::string::npos);  // no tokenizer.ggml.pre
}

TEST(TokenizerUnit, MalformedMetadataIsFormatError) {
  TinyBpe t;
  std::vector<uint8_t> keep;
  {  // no tokens array
    GgufBuilder b;
    b.str("tokenizer.ggml.model", "gpt2");
    b.strs("tokenizer.ggml.merges", {"a b"});
    EXPECT_THROW(from_builder(b, keep), FormatError);
  }
  {  // tokens of the wrong type
    GgufBuilder b;
    b.str("tokenizer.ggml.model", "llama");
    b.i32s("tokenizer.ggml.tokens", {1, 2, 3});
    EXPECT_THROW(from_builder(b, keep), FormatError);
  }
  {  // merge referencing an unknown token
    GgufBuilder b;
    b.str("tokenizer.ggml.model", "gpt2");
    b.strs("tokenizer.ggml.tokens", t.tokens);
    b.strs("tokenizer.ggml.merges", {"a b", "x yz"});
    EXPECT_THROW(from_builder(b, keep), FormatError);
  }
  {  // merge without a separator
    GgufBuilder b;
    b.str("tokenizer.ggml.model", "gpt2");
    b.strs("tokenizer.ggml.tokens", t.tokens);
    b.strs("tokenizer.ggml.merges", {"ab"});
    EXPECT_THROW(from_builder(b, keep), FormatError);
  }
  {  // gpt2 without merges
    GgufBuilder b;
    b.str("tokenizer.ggml.model", "gpt2");
    b.strs("tokenizer.ggml.tokens", t.tokens);
    EXPECT_THROW(from_builder(b, keep), FormatError);
  }
  {  // scores / types of the wrong length
    GgufBuilder b;
    b.str("tokenizer.ggml.model", "llama");
    b.strs("tokenizer.ggml.tokens", {"<unk>", "a", "b"});
    b.f32s("tokenizer.ggml.scores", {0, 1});
    EXPECT_THROW(from_builder(b, keep), FormatError);
    GgufBuilder c;
    c.str("tokenizer.ggml.model", "llama");
    c.strs("tokenizer.ggml.tokens", {"<unk>", "a", "b"});
    c.i32s("tokenizer.ggml.token_type", {2, 1, 1, 1});
    EXPECT_THROW(from_builder(c, keep), FormatError);
  }
  {  // BOS outside the vocabulary
    GgufBuilder b;
    b.str("tokenizer.ggml.model", "llama");
    b.strs("tokenizer.ggml.tokens", {"<unk>", "a", "b"});
    b.u32("tokenizer.ggml.bos_token_id", 7);
    EXPECT_THROW(from_builder(b, keep), FormatError);
  }
  {  // no model key at all
    GgufBuilder b;
    b.strs("tokenizer.ggml.tokens", {"<unk>", "a"});
    EXPECT_THROW(from_builder(b, keep), FormatError);
  }
  {  // unknown model
    GgufBuilder b;
    b.str("tokenizer.ggml.model", "bert");
    b.strs("tokenizer.ggml.tokens", {"<unk>", "a"});
    EXPECT_THROW(from_builder(b, keep), Unsupported);
  }
}

TEST(TokenizerUnit, UnknownPreFallsBackVisibly) {
  TinyBpe t;
  GgufBuilder b;
  b.str("tokenizer.ggml.model", "gpt2");
  b.str("tokenizer.ggml.pre", "some-future-model");
  b.strs("tokenizer.ggml.tokens", t.tokens);
  b.strs("tokenizer.ggml.merges", {"a b"});
  std::vector<uint8_t> keep;
  const Tokenizer tok = from_builder(b, keep);
  EXPECT_NE(tok.warning().find("some-future-model"), std::string::npos);
  EXPECT_EQ(tok.encode("ab", false, false), (std::vector<int32_t>{256}));
}

// SPM details the HF reference cannot show (transformers' GGUF loader ignores add_space_prefix).
TEST(TokenizerUnit, SpmSpacePrefixAndScores) {
  const std::string sp = "\xE2\x96\x81";
  auto make = [&](bool prefix, float hi_score, std::vector<uint8_t>& keep) {
    GgufBuilder b;
    b.str("tokenizer.ggml.model", "llama");
    b.strs("tokenizer.ggml.tokens", {"<unk>", "<s>", "</s>", sp, "h", "i", sp + "h", "hi", "ih", "<0x21>"});
    b.f32s("tokenizer.ggml.scores", {0, 0, 0, -1, -2, -3, -5, hi_score, -4, 0});
    b.i32s("tokenizer.ggml.token_type", {2, 3, 3, 1, 1, 1, 1, 1, 1, 6});
    b.u32("tokenizer.ggml.bos_token_id", 1);
    b.u32("tokenizer.ggml.eos_token_id", 2);
    b.boolean("tokenizer.ggml.add_space_prefix", prefix);
    return from_builder(b, keep);
  };
  std::vector<uint8_t> k1, k2, k3;
  const Tokenizer with = make(true, -6, k1);
  EXPECT_EQ(with.encode("hi", true, true), (std::vector<int32_t>{1, 6, 5}));  // "▁h" outscores "hi"
  EXPECT_EQ(with.decode({1, 6, 5}), "hi");
  const Tokenizer hi_first = make(true, -1, k2);
  EXPECT_EQ(hi_first.encode("hi", false, true), (std::vector<int32_t>{3, 7}));
  EXPECT_EQ(hi_first.encode("hi!?", false, true),
            (std::vector<int32_t>{3, 7, 9, 0}));  // byte fallback, else unk
  const Tokenizer without = make(false, -6, k3);
  EXPECT_FALSE(without.add_space_prefix());
  EXPECT_EQ(without.encode("hi", false, true), (std::vector<int32_t>{7}));
  EXPECT_EQ(without.encode(" hi", false, true), (std::vector<int32_t>{6, 5}));
  EXPECT_EQ(without.decode({6, 5}), " hi");  // nothing stripped without the prefix
}

TEST(TokenizerUnit, SpecialIdsAndEog) {
  const Tokenizer smol = load("bpe_smollm.gguf");
  EXPECT_EQ(smol.bos(), 1);
  EXPECT_EQ(smol.eos(), 2);
  EXPECT_TRUE(smol.is_eog(2));  // <|im_end|>
  EXPECT_TRUE(smol.is_eog(0));  // <|endoftext|>
  EXPECT_FALSE(smol.is_eog(1));
  EXPECT_FALSE(smol.is_eog(-1));
  EXPECT_FALSE(smol.is_eog(1 << 30));
  EXPECT_EQ(smol.token_id("<|im_start|>"), 1);
  EXPECT_FALSE(smol.token_id("definitely not a token").has_value());
  EXPECT_EQ(smol.token_to_piece(1), "<|im_start|>");
  EXPECT_EQ(smol.token_to_piece(-5), "");
  const Tokenizer spm = load("spm_stories260k.gguf");
  EXPECT_EQ(spm.n_vocab(), 512);
  EXPECT_TRUE(spm.wants_bos());
  EXPECT_EQ(spm.bos(), 1);
  EXPECT_TRUE(spm.is_eog(2));
  EXPECT_EQ(spm.encode("hi", true, true).front(), 1);
  EXPECT_NE(spm.encode("hi", false, true).front(), 1);
  EXPECT_EQ(spm.token_to_piece(*spm.token_id("<0xE6>")), "\xE6");
  EXPECT_EQ(spm.token_to_piece(*spm.token_id("\xE2\x96\x81the")), " the");
}

void check_stream(const Tokenizer& tok, const std::string& text) {
  const auto ids = tok.encode(text, true, true);
  StreamDecoder sd(tok);
  std::string all;
  bool split_seen = false;
  for (int32_t id : ids) {
    const std::string piece = tok.token_to_piece(id);
    if (!piece.empty() && utf8_incomplete_tail(piece) > 0) split_seen = true;
    const std::string out = sd.push(id);
    EXPECT_TRUE(valid_utf8(out)) << "partial UTF-8 emitted for id " << id;
    all += out;
  }
  all += sd.flush();
  EXPECT_TRUE(split_seen) << "test text should contain a character split across tokens";
  EXPECT_EQ(all, tok.decode(ids));
  EXPECT_EQ(all, text);
}

TEST(TokenizerUnit, StreamDecoderReassemblesSplitCharacters) {
  // SPM: CJK and emoji fall back to <0xXX> byte tokens, one byte per token.
  check_stream(load("spm_stories260k.gguf"), "Lily saw 日本 and 😀 today.");
  // Byte-level BPE: rare emoji are split into several byte-level tokens.
  check_stream(load("bpe_smollm.gguf"), "emoji 😀👍🏽 and 🇺🇸 done");
}

TEST(TokenizerUnit, StreamDecoderHoldsAndReplaces) {
  const Tokenizer spm = load("spm_stories260k.gguf");
  const int32_t f0 = *spm.token_id("<0xF0>"), x9f = *spm.token_id("<0x9F>"), x98 = *spm.token_id("<0x98>"),
                x80 = *spm.token_id("<0x80>");
  StreamDecoder sd(spm);
  EXPECT_EQ(sd.push(f0), "");
  EXPECT_EQ(sd.push(x9f), "");
  EXPECT_EQ(sd.push(x98), "");
  EXPECT_EQ(sd.push(x80), "\xF0\x9F\x98\x80");
  // An incomplete sequence left at the end flushes as one U+FFFD; a stray continuation byte is
  // replaced at once.
  EXPECT_EQ(sd.push(f0), "");
  EXPECT_EQ(sd.flush(), "\xEF\xBF\xBD");
  StreamDecoder sd2(spm);
  EXPECT_EQ(sd2.push(x80), "\xEF\xBF\xBD");
  EXPECT_EQ(sd2.push(spm.bos()), "");  // control tokens are skipped
}

TEST(TokenizerUnit, EncodeSpeed) {
  const Tokenizer smol = load("bpe_smollm.gguf");
  const Tokenizer spm = load("spm_stories260k.gguf");
  std::string text;
  const std::string para =
      "Once upon a time, there was a little girl named Lily. She loved to play outside in the sunshine, "
      "and she counted 1234 flowers! def f(x):\n    return x ** 2  # café 日本 😀\n";
  while (text.size() < 100 * 1024) text += para;
  for (const Tokenizer* tok : {&smol, &spm}) {
    // Best of 3, wall and thread CPU time (the latter is what matters on a shared, loaded machine).
    double best_wall = 1e9, best_cpu = 1e9;
    std::vector<int32_t> ids;
    for (int rep = 0; rep < 3; ++rep) {
      timespec c0{}, c1{};
      clock_gettime(CLOCK_THREAD_CPUTIME_ID, &c0);
      const auto t0 = std::chrono::steady_clock::now();
      ids = tok->encode(text, false, true);
      const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      clock_gettime(CLOCK_THREAD_CPUTIME_ID, &c1);
      best_wall = std::min(best_wall, wall);
      best_cpu = std::min(best_cpu, double(c1.tv_sec - c0.tv_sec) + 1e-9 * double(c1.tv_nsec - c0.tv_nsec));
    }
    std::cout << "[ perf ] " << tok->model() << ": " << text.size() / 1024 << " KB -> " << ids.size()
              << " tokens, " << best_wall * 1e3 << " ms wall, " << best_cpu * 1e3 << " ms cpu ("
              << ids.size() / best_cpu / 1e6 << " M tokens/s)\n";
    EXPECT_EQ(tok->decode(ids), text);
    EXPECT_LT(best_wall, 2.0);  // generous: catches quadratic blow-ups, not noise
  }
}

// Arbitrary bytes (invalid UTF-8 included) never crash; byte-level BPE and SPM with byte fallback
// reproduce them exactly.
TEST(TokenizerUnit, ArbitraryBytesRoundTrip) {
  const Tokenizer smol = load("bpe_smollm.gguf");
  const Tokenizer spm = load("spm_stories260k.gguf");
  uint64_t state = 12345;
  auto next = [&] {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    return uint32_t(state >> 33);
  };
  for (int rep = 0; rep < 300; ++rep) {
    std::string s(1 + next() % 40, '\0');
    for (char& c : s) c = char(next() % 4 == 0 ? 'a' + next() % 26 : next() % 256);
    const auto spm_ids = spm.encode(s, false, true);
    for (int32_t id : spm_ids) ASSERT_TRUE(id >= 0 && id < spm.n_vocab());
    EXPECT_EQ(spm.decode(spm_ids), utf8_sanitize(s));
    std::string raw;
    for (int32_t id : spm_ids) raw += spm.token_to_piece(id);
    EXPECT_EQ(raw, " " + s);  // pieces are lossless; the prefix space is still there
    // Byte-level BPE drops bytes whose mapped character is not in the vocabulary.
    std::string kept;
    for (char c : s) {
      if (smol.token_id(byte_char(uint8_t(c)))) kept += c;
    }
    const auto bpe_ids = smol.encode(s, false, true);
    for (int32_t id : bpe_ids) ASSERT_TRUE(id >= 0 && id < smol.n_vocab());
    EXPECT_EQ(smol.decode(bpe_ids), utf8_sanitize(kept));
    std::string raw_bpe;
    for (int32_t id : bpe_ids) raw_bpe += smol.token_to_piece(id);
    EXPECT_EQ(raw_bpe, kept);
  }
}

TEST(TokenizerUnit, Utf8SanitizeReplacesMaximalSubparts) {
  EXPECT_EQ(utf8_sanitize("ok \xC3\xA9"), "ok \xC3\xA9");
  EXPECT_EQ(utf8_sanitize("\xF0\x9F\x98x"), "\xEF\xBF\xBDx");                        // truncated 4-byte
  EXPECT_EQ(utf8_sanitize("\x80\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD");                  // lone continuations
  EXPECT_EQ(utf8_sanitize("\xED\xA0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");  // surrogate
  EXPECT_EQ(utf8_sanitize("\xC0\xAF"), "\xEF\xBF\xBD\xEF\xBF\xBD");                  // overlong
  const std::string r = "\xEF\xBF\xBD";
  EXPECT_EQ(utf8_sanitize("\xF4\x90\x80\x80"), r + r + r + r);  // above U+10FFFF
  EXPECT_EQ(utf8_sanitize("a\xE2\x96"), "a\xEF\xBF\xBD");
}

TEST(TokenizerUnit, LongWordsStayFast) {
  // A 200 KB run without any split point must not be quadratic.
  const Tokenizer smol = load("bpe_smollm.gguf");
  const std::string text(200 * 1024, 'a');
  const auto t0 = std::chrono::steady_clock::now();
  const auto ids = smol.encode(text, false, false);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(smol.decode(ids), text);
  EXPECT_LT(s, 2.0);
}

}  // namespace
}  // namespace qleap

#include "runtime/generation.h"
#include "tokenizer/harmony.h"

namespace qleap {
namespace {

// TinyBpe with harmony's control tokens: <|end|> 257, then these from 258.
Tokenizer harmony_vocab(std::vector<uint8_t>& keep, bool harmony = true) {
  TinyBpe t;
  if (harmony) {
    for (const char* s :
         {"<|start|>", "<|channel|>", "<|message|>", "<|return|>", "<|call|>", "<|constrain|>"}) {
      t.tokens.push_back(s);
      t.types.push_back(3);
    }
  }
  GgufBuilder b;
  b.str("tokenizer.ggml.model", "gpt2");
  b.str("tokenizer.ggml.pre", "default");
  b.strs("tokenizer.ggml.tokens", t.tokens);
  b.i32s("tokenizer.ggml.token_type", t.types);
  b.strs("tokenizer.ggml.merges", {"a b"});
  return from_builder(b, keep);
}

constexpr int32_t kEnd = 257, kStart = 258, kChannel = 259, kMessage = 260, kReturn = 261, kCall = 262;

std::vector<int32_t> text_ids(const Tokenizer& tok, const std::string& s) {
  return tok.encode(s, false, false);
}

// What a gpt-oss model writes after "<|start|>assistant": reasoning, then the answer.
std::vector<int32_t> harmony_reply(const Tokenizer& tok) {
  std::vector<int32_t> ids = {kChannel};
  for (const auto& part :
       {std::pair<std::vector<int32_t>, std::vector<int32_t>>{text_ids(tok, "analysis"), {kMessage}},
        {text_ids(tok, "think hard"), {kEnd, kStart}},
        {text_ids(tok, "assistant"), {kChannel}},
        {text_ids(tok, "final"), {kMessage}},
        {text_ids(tok, "4, yes"), {kReturn}}}) {
    ids.insert(ids.end(), part.first.begin(), part.first.end());
    ids.insert(ids.end(), part.second.begin(), part.second.end());
  }
  return ids;
}

TEST(Harmony, EndIsNotEndOfGenerationWhereReturnExists) {
  std::vector<uint8_t> keep, keep2;
  const Tokenizer h = harmony_vocab(keep);
  EXPECT_FALSE(h.is_eog(kEnd));  // closes the reasoning message; the turn goes on
  EXPECT_TRUE(h.is_eog(kReturn));
  EXPECT_TRUE(h.is_eog(kCall));
  EXPECT_FALSE(h.is_eog(kChannel));
  const Tokenizer plain = harmony_vocab(keep2, false);
  EXPECT_TRUE(plain.is_eog(kEnd));  // phi3 and others: <|end|> ends the turn
  EXPECT_FALSE(HarmonyStream::detect(plain).has_value());
}

TEST(Harmony, StreamTellsChannels) {
  std::vector<uint8_t> keep;
  const Tokenizer tok = harmony_vocab(keep);
  auto hs = HarmonyStream::detect(tok);
  ASSERT_TRUE(hs.has_value());
  std::string fin, analysis, markers;
  for (int32_t id : harmony_reply(tok)) {
    switch (hs->push(id)) {
      case HarmonyStream::Kind::kFinal:
        fin += tok.token_to_piece(id);
        break;
      case HarmonyStream::Kind::kAnalysis:
        analysis += tok.token_to_piece(id);
        break;
      case HarmonyStream::Kind::kMarker:
        markers += tok.token_to_piece(id);
        break;
      case HarmonyStream::Kind::kOther:
        ADD_FAILURE() << "no other channel here";
    }
  }
  EXPECT_EQ(fin, "4, yes");
  EXPECT_EQ(analysis, "think hard");
  EXPECT_EQ(hs->channel(), "final");
  // A tool call's header carries the recipient and content type; its body is not shown.
  auto tc = HarmonyStream::detect(tok);
  std::vector<int32_t> call = {kChannel};
  for (int32_t id : text_ids(tok, "commentary to=functions.f json")) call.push_back(id);
  call.push_back(kMessage);
  for (int32_t id : text_ids(tok, "{}")) call.push_back(id);
  std::vector<HarmonyStream::Kind> kinds;
  for (int32_t id : call) kinds.push_back(tc->push(id));
  EXPECT_EQ(tc->channel(), "commentary");
  EXPECT_EQ(kinds.back(), HarmonyStream::Kind::kOther);
  // Text before any header (a model that skips the channels) is shown.
  auto raw = HarmonyStream::detect(tok);
  EXPECT_EQ(raw->push(text_ids(tok, "x")[0]), HarmonyStream::Kind::kFinal);
}

// The generation loop shows the final channel as text, the analysis channel as reasoning, and runs
// past <|end|> to <|return|>.
TEST(Harmony, GenerationSplitsFinalFromReasoning) {
  std::vector<uint8_t> keep;
  const Tokenizer tok = harmony_vocab(keep);
  SamplerParams greedy;
  greedy.temperature = 0;
  Generation gen(tok, greedy, {}, -1);
  std::string text, reasoning;
  bool done = false;
  const std::vector<int32_t> reply = harmony_reply(tok);
  std::vector<float> logits(size_t(tok.n_vocab()));
  for (int32_t id : reply) {
    ASSERT_FALSE(done) << "stopped before <|return|>";
    std::fill(logits.begin(), logits.end(), 0.0f);
    logits[size_t(id)] = 10.0f;
    const Generation::Step st = gen.next(logits.data(), tok.n_vocab());
    EXPECT_EQ(st.token, id);
    text += st.text;
    reasoning += st.reasoning;
    done = st.done;
  }
  text += gen.finish();
  EXPECT_TRUE(done);
  EXPECT_EQ(text, "4, yes");
  EXPECT_EQ(reasoning, "think hard");
}

}  // namespace
}  // namespace qleap
