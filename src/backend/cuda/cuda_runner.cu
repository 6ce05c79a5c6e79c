// GpuLayers: the offloaded decoder layers (and optionally the output head) of a dense
// llama / qwen2 / qwen3 model, with their weights (shared between sessions) and a per-session f16
// KV cache in device memory.
// A decode step (one token) is captured once as a CUDA graph and replayed: every kernel reads the
// position from device memory, and the attention grid is sized for the whole context (splits past
// the current position exit at once), so the same graph serves every step.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "backend/cuda/cuda_api.h"
#include "backend/cuda/cuda_blas.cuh"
#include "backend/cuda/cuda_common.cuh"
#include "core/error.h"
#include "model/blocks.h"
#include "model/model.h"
#include "placement/placement.h"

namespace qleap::cuda {
namespace {

constexpr int kDecodeSplit = 256;                        // keys per attention split at decode
constexpr size_t kPartialBudget = size_t(64) << 20;      // bytes for prefill attention partials
constexpr size_t kWeightSliceBytes = size_t(128) << 20;  // f16 dequantized weight slice for GEMMs

DevBuf<float> vec_to_dev(const std::vector<float>& v) {
  DevBuf<float> d(v.size());
  if (!v.empty()) d.upload(v.data(), v.size());
  return d;
}

struct DevLayer {
  DevBuf<float> attn_norm, ffn_norm, q_norm, k_norm, bq, bk, bv;
  DevWeight wq, wk, wv, wo, w_gate, w_up, w_down;
};

// The device copy of the offloaded weights, shared by every session of a model with the same
// placement (a server's sessions then hold one copy of the weights and each its own cache).
struct DevModel {
  std::vector<DevLayer> layers;  // layers [first, n_layers)
  DevBuf<float> out_norm;
  DevWeight output;  // only when the head is on the GPU
  size_t weight_bytes = 0;
  size_t max_cols = 0;
};

std::shared_ptr<const DevModel> upload_model(const Model& model, int first, bool head) {
  auto dm = std::make_shared<DevModel>();
  const ModelWeights& w = model.weights();
  for (int il = first; il < model.hparams().n_layers; ++il) {
    const LayerWeights& s = w.layers[size_t(il)];
    DevLayer d;
    d.attn_norm = vec_to_dev(s.attn_norm);
    d.ffn_norm = vec_to_dev(s.ffn_norm);
    d.q_norm = vec_to_dev(s.q_norm);
    d.k_norm = vec_to_dev(s.k_norm);
    d.bq = vec_to_dev(s.bq);
    d.bk = vec_to_dev(s.bk);
    d.bv = vec_to_dev(s.bv);
    for (auto [dst, src] : {std::pair{&d.wq, &s.wq},
                            {&d.wk, &s.wk},
                            {&d.wv, &s.wv},
                            {&d.wo, &s.wo},
                            {&d.w_gate, &s.w_gate},
                            {&d.w_up, &s.w_up},
                            {&d.w_down, &s.w_down}}) {
      *dst = upload_weight(*src);
      dm->weight_bytes += dst->bytes();
      dm->max_cols = std::max<size_t>(dm->max_cols, size_t(src->cols));
    }
    dm->layers.push_back(std::move(d));
  }
  if (head) {
    dm->out_norm = vec_to_dev(w.output_norm);
    dm->output = upload_weight(w.output);
    dm->weight_bytes += dm->output.bytes();
    dm->max_cols = std::max<size_t>(dm->max_cols, size_t(w.output.cols));
  }
  return dm;
}

// A live session keeps its Model alive, so a registered address cannot be reused by another model
// while its entry can still be locked.
size_t weights_bytes(const Model& model, int first, bool head) {
  const ModelWeights& w = model.weights();
  size_t b = head ? device_weight_bytes(w.output) : 0;
  for (int il = first; il < model.hparams().n_layers; ++il) {
    const LayerWeights& s = w.layers[size_t(il)];
    for (const WeightView* v : {&s.wq, &s.wk, &s.wv, &s.wo, &s.w_gate, &s.w_up, &s.w_down}) {
      b += device_weight_bytes(*v);
    }
  }
  return b;
}

// Fails early, with advice, instead of part way through the upload.
void check_fits(size_t need, int n_gpu_layers) {
  size_t free_b = 0, total_b = 0;
  QL_CUDA(cudaMemGetInfo(&free_b, &total_b));
  if (need > free_b) {
    char msg[256];
    std::snprintf(
        msg, sizeof msg,
        "--gpu-layers %d needs %.2f GiB of GPU memory but %.2f GiB are free: offload fewer layers or "
        "use a smaller --ctx",
        n_gpu_layers, double(need) / double(1 << 30), double(free_b) / double(1 << 30));
    throw InvalidArgument(msg);
  }
}

std::shared_ptr<const DevModel> shared_model(const Model& model, int first, bool head, size_t extra_bytes) {
  static std::mutex mu;
  static std::map<std::tuple<const Model*, int, bool>, std::weak_ptr<const DevModel>> registry;
  std::lock_guard<std::mutex> lock(mu);
  for (auto it = registry.begin(); it != registry.end();) {
    it = it->second.expired() ? registry.erase(it) : std::next(it);
  }
  const auto key = std::make_tuple(&model, first, head);
  if (auto it = registry.find(key); it != registry.end()) {
    if (auto p = it->second.lock()) return p;
  }
  check_fits(weights_bytes(model, first, head) + extra_bytes, model.hparams().n_layers - first);
  auto p = upload_model(model, first, head);
  registry[key] = p;
  return p;
}

// Owners of the runner's CUDA handles, so that a constructor failing half way releases them.
struct StreamHolder {
  cudaStream_t s = nullptr;
  ~StreamHolder() {
    if (s) cudaStreamDestroy(s);
  }
};
struct BlasHolder {
  cublasHandle_t h = nullptr;
  ~BlasHolder() {
    if (h) blas::destroy(h);
  }
};
template <class T>
struct PinnedHolder {
  T* p = nullptr;
  ~PinnedHolder() {
    if (p) cudaFreeHost(p);
  }
  void alloc(size_t n) {
    if (p) cudaFreeHost(p);
    p = nullptr;
    QL_CUDA(cudaMallocHost(&p, n * sizeof(T)));
  }
};
struct GraphHolder {
  cudaGraphExec_t g = nullptr;
  ~GraphHolder() { reset(); }
  void reset() {
    if (g) cudaGraphExecDestroy(g);
    g = nullptr;
  }
};

class CudaLayers final : public GpuLayers {
 public:
  CudaLayers(const Model& model, const Placement& pl, const RopeTable& rope, int n_ctx, int n_batch)
      : hp_(model.hparams()),
        first_(pl.first_gpu_layer()),
        head_(pl.output_on_gpu),
        n_ctx_(n_ctx),
        n_batch_(n_batch) {
    const std::string& arch = model.arch();
    if (arch != "llama" && arch != "qwen2" && arch != "qwen3") {
      throw Unsupported("--gpu-layers: architecture '" + arch + "' has no CUDA path");
    }
    if (device_count() == 0) throw Unsupported("--gpu-layers: no CUDA device");
    if (hp_.head_dim > 256) throw Unsupported("--gpu-layers: head_dim > 256");
    if (rope.n_pos() < n_ctx) throw InvalidArgument("RoPE table shorter than the context");
    const char* g = std::getenv("QLEAP_CUDA_GRAPHS");
    use_graphs_ = !(g && std::string(g) == "0");
    QL_CUDA(cudaStreamCreateWithFlags(&stream_.s, cudaStreamNonBlocking));
    st_ = stream_.s;
    QL_CUBLAS(blas::create(&blas_holder_.h));
    blas_ = blas_holder_.h;
    QL_CUBLAS(blas::set_stream(blas_, st_));

    const size_t kv_elems = size_t(n_ctx) * hp_.kv_dim();
    const int n_gpu = hp_.n_layers - first_;
    // KV cache, activations, attention partials and the GEMM slice (estimate; small items omitted).
    const size_t extra =
        2 * kv_elems * sizeof(__half) * size_t(n_gpu) +
        size_t(n_batch) * (2 * hp_.n_embd + 2 * hp_.q_dim() + 2 * hp_.kv_dim() + 2 * hp_.n_ff) * 4 +
        kPartialBudget + (n_batch > 1 ? kWeightSliceBytes : 0);
    dm_ = shared_model(model, first_, head_, extra);
    check_fits(extra, n_gpu);
    k_cache_.resize(dm_->layers.size());
    v_cache_.resize(dm_->layers.size());
    for (size_t i = 0; i < dm_->layers.size(); ++i) {
      k_cache_[i].alloc(kv_elems);
      v_cache_[i].alloc(kv_elems);
    }
    const size_t max_cols = dm_->max_cols;
    rope_.alloc(size_t(n_ctx) * rope.n_rot());
    rope_.upload(rope.at(0), rope_.size());
    n_rot_ = rope.n_rot();
    neox_ = rope.style() == RopeStyle::kNeox;

    const size_t nb = size_t(n_batch);
    x_.alloc(nb * hp_.n_embd);
    xn_.alloc(nb * hp_.n_embd);
    q_.alloc(nb * hp_.q_dim());
    attn_.alloc(nb * hp_.q_dim());
    k_.alloc(nb * hp_.kv_dim());
    v_.alloc(nb * hp_.kv_dim());
    gate_.alloc(nb * hp_.n_ff);
    up_.alloc(nb * hp_.n_ff);
    pos_.alloc(1);
    decode_splits_ = (n_ctx + kDecodeSplit - 1) / kDecodeSplit;
    const size_t decode_partial = size_t(hp_.n_heads) * decode_splits_ * (hp_.head_dim + 2);
    partial_.alloc(std::max(decode_partial, kPartialBudget / sizeof(float)));
    if (n_batch > 1) {
      const size_t wslice = std::max(max_cols, kWeightSliceBytes / 2);
      gemm_.reserve(nb * max_cols, wslice);
    }
    h_pos_holder_.alloc(1);
    h_pos_ = h_pos_holder_.p;
    h_x_holder_.alloc(nb * hp_.n_embd);
    h_x_ = h_x_holder_.p;
  }

  size_t device_bytes() const override {
    size_t b = dm_->weight_bytes + rope_.bytes() + partial_.bytes() + gemm_.xh.bytes() + gemm_.wtmp.bytes() +
               logits_.bytes();
    for (size_t i = 0; i < k_cache_.size(); ++i) b += k_cache_[i].bytes() + v_cache_[i].bytes();
    for (const DevBuf<float>* p : {&x_, &xn_, &q_, &attn_, &k_, &v_, &gate_, &up_}) b += p->bytes();
    return b;
  }

  bool forward(float* x, int m, int pos0, float* logits, bool all) override {
    if (m <= 0 || m > n_batch_) throw InvalidArgument("GpuLayers::forward: m = " + std::to_string(m));
    if (pos0 < 0 || pos0 + m > n_ctx_)
      throw InvalidArgument("GpuLayers::forward: positions outside the context");
    const int n = hp_.n_embd;
    const bool head = head_ && logits != nullptr;
    const int head_rows = head ? (all ? m : 1) : 0;
    if (head) ensure_logits(head_rows);
    *h_pos_ = pos0;
    std::memcpy(h_x_, x, size_t(m) * n * sizeof(float));
    QL_CUDA(cudaMemcpyAsync(pos_.get(), h_pos_, sizeof(int), cudaMemcpyHostToDevice, st_));
    QL_CUDA(cudaMemcpyAsync(x_.get(), h_x_, size_t(m) * n * sizeof(float), cudaMemcpyHostToDevice, st_));
    if (m == 1 && use_graphs_) {
      launch_decode_graph(head);
    } else {
      run(m, head_rows);
    }
    if (logits == nullptr) {  // a prefill chunk whose logits nobody wants: nothing reads x after it
      QL_CUDA(cudaStreamSynchronize(st_));
      return false;
    }
    if (head) {
      const size_t cnt = size_t(head_rows) * hp_.n_vocab;
      QL_CUDA(cudaMemcpyAsync(h_logits_, logits_.get(), cnt * sizeof(float), cudaMemcpyDeviceToHost, st_));
      QL_CUDA(cudaStreamSynchronize(st_));
      std::memcpy(logits, h_logits_, cnt * sizeof(float));
      return true;
    }
    QL_CUDA(cudaMemcpyAsync(h_x_, x_.get(), size_t(m) * n * sizeof(float), cudaMemcpyDeviceToHost, st_));
    QL_CUDA(cudaStreamSynchronize(st_));
    std::memcpy(x, h_x_, size_t(m) * n * sizeof(float));
    return false;
  }

 private:
  void ensure_logits(int rows) {
    const size_t need = size_t(rows) * hp_.n_vocab;
    if (logits_.size() >= need) return;
    graph_.reset();  // the graph holds the old logits pointer
    logits_.alloc(need);
    h_logits_holder_.alloc(need);
    h_logits_ = h_logits_holder_.p;
  }

  void launch_decode_graph(bool head) {
    if (graph_.g && graph_head_ != head) graph_.reset();
    if (!graph_.g) {
      cudaGraph_t g = nullptr;
      QL_CUDA(cudaStreamBeginCapture(st_, cudaStreamCaptureModeThreadLocal));
      try {
        run(1, head ? 1 : 0);
      } catch (...) {
        if (cudaStreamEndCapture(st_, &g) == cudaSuccess && g) cudaGraphDestroy(g);
        cudaGetLastError();
        throw;
      }
      QL_CUDA(cudaStreamEndCapture(st_, &g));
      const cudaError_t e = cudaGraphInstantiate(&graph_.g, g, 0);
      cudaGraphDestroy(g);
      QL_CUDA(e);
      graph_head_ = head;
    }
    QL_CUDA(cudaGraphLaunch(graph_.g, st_));
  }

  // All offloaded layers for m tokens in x_, then (head_rows > 0) the norm and output head of the
  // last head_rows rows into logits_.
  void run(int m, int head_rows) {
    const int n = hp_.n_embd;
    for (size_t i = 0; i < dm_->layers.size(); ++i) layer(dm_->layers[i], k_cache_[i], v_cache_[i], m);
    if (head_rows > 0) {
      const float* xs = x_.get() + size_t(m - head_rows) * n;
      rms_norm(xs, dm_->out_norm.get(), xn_.get(), head_rows, n, hp_.rms_eps, st_);
      matmul(dm_->output, xn_.get(), head_rows, logits_.get(), false, st_, blas_, gemm_);
    }
  }

  void layer(const DevLayer& d, DevBuf<__half>& kc, DevBuf<__half>& vc, int m) {
    const int n = hp_.n_embd;
    rms_norm(x_.get(), d.attn_norm.get(), xn_.get(), m, n, hp_.rms_eps, st_);
    matmul(d.wq, xn_.get(), m, q_.get(), false, st_, blas_, gemm_);
    matmul(d.wk, xn_.get(), m, k_.get(), false, st_, blas_, gemm_);
    matmul(d.wv, xn_.get(), m, v_.get(), false, st_, blas_, gemm_);
    QkvPostArgs qa{};
    qa.q = q_.get();
    qa.k = k_.get();
    qa.v = v_.get();
    qa.bq = d.bq.size() ? d.bq.get() : nullptr;
    qa.bk = d.bk.size() ? d.bk.get() : nullptr;
    qa.bv = d.bv.size() ? d.bv.get() : nullptr;
    qa.q_norm = d.q_norm.size() ? d.q_norm.get() : nullptr;
    qa.k_norm = d.k_norm.size() ? d.k_norm.get() : nullptr;
    qa.rope = rope_.get();
    qa.n_rot = n_rot_;
    qa.neox = neox_ ? 1 : 0;
    qa.k_cache = kc.get();
    qa.v_cache = vc.get();
    qa.n_heads = hp_.n_heads;
    qa.n_kv_heads = hp_.n_kv_heads;
    qa.hd = hp_.head_dim;
    qa.eps = hp_.rms_eps;
    qkv_post(qa, m, pos_.get(), st_);

    AttnArgs aa{};
    aa.q = q_.get();
    aa.k_cache = kc.get();
    aa.v_cache = vc.get();
    aa.out = attn_.get();
    aa.partial = partial_.get();
    aa.n_heads = hp_.n_heads;
    aa.n_kv_heads = hp_.n_kv_heads;
    aa.hd = hp_.head_dim;
    aa.scale = 1.0f / std::sqrt(float(hp_.head_dim));
    if (m == 1) {
      aa.split_len = kDecodeSplit;
      aa.n_splits = decode_splits_;
    } else {
      // Prefill: the queries already fill the GPU, so use as few splits as the partial buffer and
      // the longest key range allow.
      const int maxlen = n_past_bound(m);
      const size_t per_split = size_t(m) * hp_.n_heads * (hp_.head_dim + 2);
      const int cap = int(std::max<size_t>(1, partial_.size() / per_split));
      aa.n_splits = std::max(1, std::min(cap, (maxlen + kDecodeSplit - 1) / kDecodeSplit));
      aa.split_len = (maxlen + aa.n_splits - 1) / aa.n_splits;
    }
    attention(aa, m, pos_.get(), st_);
    matmul(d.wo, attn_.get(), m, x_.get(), true, st_, blas_, gemm_);

    rms_norm(x_.get(), d.ffn_norm.get(), xn_.get(), m, n, hp_.rms_eps, st_);
    matmul(d.w_gate, xn_.get(), m, gate_.get(), false, st_, blas_, gemm_);
    matmul(d.w_up, xn_.get(), m, up_.get(), false, st_, blas_, gemm_);
    silu_mul(gate_.get(), up_.get(), int64_t(m) * hp_.n_ff, st_);
    matmul(d.w_down, gate_.get(), m, x_.get(), true, st_, blas_, gemm_);
  }

  // Keys the last of m tokens sees; *h_pos_ holds pos0 (set before run()).
  int n_past_bound(int m) const { return *h_pos_ + m; }

  HParams hp_;
  int first_ = 0;
  bool head_ = false;
  int n_ctx_ = 0, n_batch_ = 0;
  bool use_graphs_ = true;
  StreamHolder stream_;
  BlasHolder blas_holder_;
  cudaStream_t st_ = nullptr;      // stream_.s
  cublasHandle_t blas_ = nullptr;  // blas_holder_.h
  std::shared_ptr<const DevModel> dm_;
  std::vector<DevBuf<__half>> k_cache_, v_cache_;  // per offloaded layer: n_ctx x kv_dim
  DevBuf<float> rope_;
  int n_rot_ = 0;
  bool neox_ = false;
  DevBuf<float> x_, xn_, q_, attn_, k_, v_, gate_, up_, partial_, logits_;
  DevBuf<int> pos_;
  GemmScratch gemm_;
  int decode_splits_ = 1;
  PinnedHolder<int> h_pos_holder_;
  PinnedHolder<float> h_x_holder_, h_logits_holder_;
  int* h_pos_ = nullptr;
  float* h_x_ = nullptr;
  float* h_logits_ = nullptr;
  GraphHolder graph_;
  bool graph_head_ = false;
};

}  // namespace

std::unique_ptr<GpuLayers> make_gpu_layers(const Model& model, const Placement& placement,
                                           const RopeTable& rope, int n_ctx, int n_batch) {
  if (!placement.any_gpu()) throw InvalidArgument("make_gpu_layers: placement has no GPU layers");
  return std::make_unique<CudaLayers>(model, placement, rope, n_ctx, n_batch);
}

}  // namespace qleap::cuda
