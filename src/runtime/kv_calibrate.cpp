#include "runtime/kv_calibrate.h"

#include <fmt/format.h>
#include <sys/stat.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <optional>
#include <sstream>

#include "core/error.h"
#include "kv/kv_calibration.h"
#include "kv/kv_turboquant.h"
#include "runtime/engine.h"
#include "runtime/logit_compare.h"
#include "tokenizer/tokenizer.h"

namespace qleap {
namespace {

// Bump when the text, the statistics or how they are used change: older files are then ignored.
constexpr const char* kCalibrationVersion = "kvcal-6";

// Exact-window lengths the per-head sensitivity is measured at (TurboQuant caches use the nearest):
// none, and the default window.
constexpr int kSensitivityWindows[] = {0, 64};

uint64_t fnv1a64(const std::string& s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  return h;
}

// The cache file for this model file, or "" when it cannot be named (no path, no folder).
std::string cache_path(const Model& model, const std::string& dir) {
  const std::string& path = model.file().path();
  if (dir.empty() || path.empty()) return "";
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return "";
  std::error_code ec;
  const std::string abs = std::filesystem::absolute(path, ec).string();
  const std::string key = fmt::format("{}|{}|{}|{}|{}", kCalibrationVersion, abs, uint64_t(st.st_size),
                                      int64_t(st.st_mtime), int64_t(st.st_mtim.tv_nsec));
  return fmt::format("{}/{:016x}.json", dir, fnv1a64(key));
}

// Tokens per forward call of the check: the engines of every candidate advance in lockstep, so only
// one step's logits of each are held (Gemma 3: 262,144 logits per token).
constexpr int kCheckStep = 64;

// The model-level check of each measured allocation (TqSensitivity::check_*): the calibration text's
// positions before the measured queries, evaluated with float caches and with 3-bit TurboQuant caches
// at each measured window, per-head rates against uniform ones; mean KL(float || tq) per position.
void check_allocations(const std::shared_ptr<const Model>& model, const std::vector<int32_t>& ids, int n_ctx,
                       int n_threads, KvCalibration& cal) {
  const int n = int(ids.size()) - kTqMeasureQueries;
  if (n < 1 || cal.tq_sensitivity.empty()) return;
  auto engine_with = [&](const std::string& type) {
    EngineOptions o;
    o.n_ctx = n_ctx;
    o.n_threads = n_threads;
    // A batch as long as the text: sliding-window layers then keep all positions (no ring), as in the
    // recorder's pass, so the per-head rates apply (with rings, layers differ in record slots and an
    // allocation would change the cache's bytes: TurboQuantKvCache keeps uniform rates then).
    o.n_batch = n_ctx;
    o.calibrate_kv = false;  // this calibration is being made: given to the caches here
    o.make_host_kv = [&cal, type](const KvShape& s) {
      std::unique_ptr<KvCache> kv = make_kv_cache(type, s);
      if (kv->wants_calibration()) kv->calibrate(cal);
      return kv;
    };
    return std::make_unique<Engine>(model, o);
  };
  const std::unique_ptr<Engine> ref = engine_with("f32");
  std::vector<std::unique_ptr<Engine>> tq;
  for (const TqSensitivity& t : cal.tq_sensitivity) {
    tq.push_back(engine_with(fmt::format("tq3:w{}", t.window)));
    tq.push_back(engine_with(fmt::format("tq3:w{}:uniform", t.window)));
  }
  const int n_vocab = model->n_vocab();
  // Per candidate engine and position: KL(float || tq).
  std::vector<std::vector<double>> kld(tq.size(), std::vector<double>(size_t(n)));
  for (int p = 0; p < n; p += kCheckStep) {
    const int m = std::min(kCheckStep, n - p);
    const float* base = ref->prefill(0, ids.data() + p, m, true);
    for (size_t e = 0; e < tq.size(); ++e) {
      const float* test = tq[e]->prefill(0, ids.data() + p, m, true);
      for (int i = 0; i < m; ++i)
        kld[e][size_t(p + i)] =
            compare_logits(base + size_t(i) * n_vocab, test + size_t(i) * n_vocab, n_vocab, -1).kld;
    }
  }
  for (size_t i = 0; i < cal.tq_sensitivity.size(); ++i) {
    TqSensitivity& t = cal.tq_sensitivity[i];
    const std::vector<double>&a = kld[2 * i], &u = kld[2 * i + 1];
    double sa = 0, su = 0, sd = 0, sd2 = 0;
    for (int p = 0; p < n; ++p) {
      const double d = a[size_t(p)] - u[size_t(p)];
      sa += a[size_t(p)];
      su += u[size_t(p)];
      sd += d;
      sd2 += d * d;
    }
    const double md = sd / n, var = n > 1 ? std::max(0.0, (sd2 - n * md * md) / (n - 1)) : 0.0;
    t.check_tokens = n;
    t.check_kld_allocated = sa / n;
    t.check_kld_uniform = su / n;
    t.check_diff_se = std::sqrt(var / n);
  }
}

std::shared_ptr<const KvCalibration> run_pass(const std::shared_ptr<const Model>& model, int n_threads) {
  const HParams& hp = model->hparams();
  const Tokenizer tok = Tokenizer::from_gguf(model->file());
  std::vector<int32_t> ids = tok.encode(kv_calibration_text(), tok.wants_bos(), false);
  const int n_ctx = std::min<int>(int(ids.size()), default_context(hp.n_ctx_train));
  ids.resize(size_t(n_ctx));
  if (ids.size() < 2) throw Error("kv calibration: the calibration text tokenizes to fewer than 2 tokens");
  KvCalibrationRecorder* rec = nullptr;
  EngineOptions o;
  o.n_ctx = n_ctx;
  o.n_threads = n_threads;
  o.n_batch = n_ctx;  // one chunk: every query sees the keys before it
  o.make_host_kv = [&rec](const KvShape& s) {
    auto r = std::make_unique<KvCalibrationRecorder>(s, /*keep_rows=*/true);
    rec = r.get();
    return r;
  };
  Engine engine(model, o);
  engine.prefill(0, ids.data(), int(ids.size()));
  auto cal = std::make_shared<KvCalibration>(rec->result());
  // The per-head sensitivity of TurboQuant caches on the same text, so that every tq type spends its
  // bits where they matter on this model without a profile to pass (measured with 3-bit caches at
  // 2, 3 and 4 bits per head; the allocation interpolates half rates).
  // The layers a KV cache holds (a hybrid model's attention layers only).
  // The recorder's shape: the engine's, with sliding windows, soft-capping and attention sinks.
  const KvShape& shape = rec->shape();
  for (int w : kSensitivityWindows) {
    std::optional<TqKvSpec> spec = parse_tq_kv_type(fmt::format("tq3:w{}", w));
    if (!spec || n_ctx < std::max(kTqMeasureMinTokens, w + 64)) continue;
    cal->tq_sensitivity.push_back(tq_measure_sensitivity(*spec, shape, *cal, rec->rows(), &engine.pool()));
  }
  try {
    check_allocations(model, ids, n_ctx, n_threads, *cal);
  } catch (const Error&) {
    // A model whose caches the check cannot build: its allocations stay unchecked (used as before).
    for (TqSensitivity& t : cal->tq_sensitivity) t.check_tokens = 0;
  }
  return cal;
}

}  // namespace

std::shared_ptr<const KvCalibration> model_kv_calibration(const std::shared_ptr<const Model>& model,
                                                          int n_threads, const std::string& cache_dir) {
  static std::mutex mu;
  static std::map<const Model*, std::pair<std::weak_ptr<const Model>, std::shared_ptr<const KvCalibration>>>
      memo;
  std::lock_guard<std::mutex> lock(mu);
  for (auto it = memo.begin(); it != memo.end();)
    it = it->second.first.expired() ? memo.erase(it) : std::next(it);
  if (auto it = memo.find(model.get()); it != memo.end()) return it->second.second;

  std::shared_ptr<const KvCalibration> cal;
  const std::string file = cache_path(*model, cache_dir);
  if (!file.empty()) {
    std::ifstream in(file);
    if (in) {
      std::stringstream ss;
      ss << in.rdbuf();
      try {
        auto c = std::make_shared<KvCalibration>(kv_calibration_from_json(ss.str()));
        const HParams& hp = model->hparams();
        c->check(KvShape{hp.kv_layers_before(hp.n_layers), 1, hp.n_heads, hp.n_kv_heads, hp.head_dim});
        cal = std::move(c);
      } catch (const std::exception&) {
        cal.reset();  // a damaged or foreign file: made again below
      }
    }
  }
  if (!cal) {
    cal = run_pass(model, n_threads);
    if (!file.empty()) {
      std::error_code ec;
      std::filesystem::create_directories(cache_dir, ec);
      // Written whole under a temporary name, then renamed: a concurrent reader never sees half a file.
      const std::string tmp = file + fmt::format(".{}.tmp", ::getpid());
      std::ofstream(tmp) << kv_calibration_to_json(*cal);
      std::filesystem::rename(tmp, file, ec);
      if (ec) std::filesystem::remove(tmp, ec);
    }
  }
  memo[model.get()] = {model, cal};
  return cal;
}

KvCalibration slice_calibration(const KvCalibration& c, int first, int end) {
  KvCalibration s = c;
  if (first < 0 || end > c.n_layers || first >= end)
    throw InvalidArgument(fmt::format("slice_calibration: layers [{}, {}) of {}", first, end, c.n_layers));
  s.n_layers = end - first;
  const size_t kvd = size_t(c.kv_dim()), b = size_t(first) * kvd, e = size_t(end) * kvd;
  for (auto [dst, src] : {std::pair{&s.sum_k, &c.sum_k},
                          {&s.sum_k2, &c.sum_k2},
                          {&s.sum_v, &c.sum_v},
                          {&s.sum_v2, &c.sum_v2},
                          {&s.sum_q2, &c.sum_q2}})
    dst->assign(src->begin() + long(b), src->begin() + long(e));
  const size_t H = size_t(c.n_kv_heads);
  for (TqSensitivity& t : s.tq_sensitivity) {
    t.n_layers = end - first;
    for (auto* err : {&t.k_err, &t.v_err})
      *err = std::vector<std::vector<double>>(err->begin() + long(size_t(first) * H),
                                              err->begin() + long(size_t(end) * H));
  }
  return s;
}

std::string default_kv_calibration_dir() {
  if (const char* e = std::getenv("QLEAP_KV_CALIB_DIR"); e && *e) return e;
  if (const char* h = std::getenv("HOME"); h && *h) return std::string(h) + "/.qleap/kvcalib";
  return "";
}

const std::string& kv_calibration_text() {
  static const std::string text =
      "Once there was a small brown dog named Pip. Pip liked to run in the garden and dig holes near the "
      "apple tree. One day he found a shiny red box under the leaves. He barked and barked until his friend "
      "Sam came to see. Sam opened the box and laughed: it was full of old buttons. \"We can make a picture "
      "with them,\" said Sam. So they sat on the grass and made a big yellow sun and a little blue boat. Mom "
      "came out and said it was the best picture she had ever seen. Pip wagged his tail and took a nap in "
      "the warm sun.\n\n"
      "The harbour was quiet before dawn. Mira walked along the pier with a thermos of tea and counted the "
      "boats that had come in overnight: seven trawlers, two sailing yachts and a small ferry that smelled "
      "of diesel. She wrote the numbers in a notebook, because her grandfather had done the same thing every "
      "morning for forty-one years, and because nobody had told her to stop.\n\n"
      "\"Are you the one who keeps the log?\" asked a man in a yellow jacket.\n"
      "\"Someone has to,\" she said. \"The tide tables are printed, but the boats are not.\"\n"
      "He laughed and asked whether the café on the corner opened at six or at seven. She told him seven, "
      "and that the bakery next to it was better anyway.\n\n"
      "Questions people ask an assistant are rarely tidy. How do I convert 3.5 kilometres to miles? What is "
      "the capital of Australia, and why is it not Sydney? Can you explain recursion to a ten-year-old? "
      "Summarize the main causes of the First World War in five bullet points. Write a polite email asking "
      "my landlord to fix the heating by Friday, 14 March.\n\n"
      "A short recipe for lentil soup:\n"
      "1. Rinse 250 g of red lentils.\n"
      "2. Fry one chopped onion and two cloves of garlic in olive oil for 5 minutes.\n"
      "3. Add the lentils, 1.2 litres of stock, a teaspoon of cumin and a pinch of salt.\n"
      "4. Simmer for 20 minutes, then blend until smooth and finish with lemon juice.\n\n"
      "def moving_average(values, window):\n"
      "    \"\"\"Return the mean of each run of `window` consecutive values.\"\"\"\n"
      "    if window <= 0:\n"
      "        raise ValueError(\"window must be positive\")\n"
      "    total = sum(values[:window])\n"
      "    out = [total / window]\n"
      "    for i in range(window, len(values)):\n"
      "        total += values[i] - values[i - window]\n"
      "        out.append(total / window)\n"
      "    return out\n\n"
      "SELECT customer_id, COUNT(*) AS orders, SUM(amount) AS spent\n"
      "FROM orders WHERE created_at >= '2024-01-01'\n"
      "GROUP BY customer_id HAVING COUNT(*) > 3 ORDER BY spent DESC LIMIT 10;\n\n"
      "In 1869 the periodic table was arranged by atomic weight; today it is ordered by atomic number. "
      "Hydrogen has one proton, helium two, lithium three. Water boils at 100 degrees Celsius at sea level, "
      "but at about 70 degrees on the summit of Everest, where the air pressure is roughly a third as "
      "high.\n\n"
      "The committee met again on Tuesday. The budget for the new library wing was approved with a margin of "
      "six votes to three, although two members asked for a second estimate of the heating costs. Work is "
      "expected to start in the autumn and to last eighteen months, during which the reading room will move "
      "to the old school building on Elm Street.\n\n"
      "{\"name\": \"sensor-12\", \"readings\": [21.4, 21.9, 22.3, 22.1], \"unit\": \"C\", \"ok\": true}\n\n"
      "Translation practice: \"Where is the train station?\" in French is \"Où est la gare ?\", in German "
      "\"Wo ist der Bahnhof?\", and in Spanish \"¿Dónde está la estación de tren?\".\n\n"
      "When the light finally came up over the water, Mira closed the notebook, finished the tea, and went "
      "to "
      "see whether the bakery had kept her a loaf of rye bread.\n";
  return text;
}

}  // namespace qleap
