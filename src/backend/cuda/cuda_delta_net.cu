// The gated DeltaNet step on a CUDA device (Backend::delta_net, backend/backend.h), and the two small ops of
// the gated attention (split_heads, sigmoid_mul). The delta rule runs in its recurrent form for prefill
// too: one block per value head, one thread per column of the head's state, tokens in order. That is
// correct for any chunk but leaves the chunked form's matrix products unused (the CPU has both).
//
// Not yet run on a GPU: compile-checked only (see docs/models.md).
#include "backend/cuda/cuda_delta_net.cuh"
#include "backend/cuda/cuda_reduce.cuh"

namespace qleap::cuda {
namespace {

__device__ __forceinline__ float silu_f(float x) {
  return x / (1.0f + __expf(-x));
}

__global__ void split_heads_kernel(const float* __restrict__ x, float* __restrict__ a, float* __restrict__ b,
                                   int64_t n_heads_total, int hd) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;  // over rows * heads * hd
  if (i >= n_heads_total * hd) return;
  const int64_t head = i / hd, j = i % hd;
  a[i] = x[head * 2 * hd + j];
  b[i] = x[head * 2 * hd + hd + j];
}

__global__ void sigmoid_mul_kernel(float* __restrict__ y, const float* __restrict__ g, int64_t n) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) y[i] *= 1.0f / (1.0f + __expf(-g[i]));
}

// Causal conv + silu of m consecutive tokens of one sequence: one thread per channel, the last K - 1
// inputs in a register ring (K <= kMaxKernel).
constexpr int kMaxKernel = 8;
__global__ void conv_sequence_kernel(float* __restrict__ x, int m, int C, int K, const float* __restrict__ w,
                                     float* __restrict__ state) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  float win[kMaxKernel];
  for (int k = 0; k < K - 1; ++k) win[k] = state[size_t(k) * C + c];
  for (int t = 0; t < m; ++t) {
    const float in = x[size_t(t) * C + c];
    float acc = w[size_t(c) * K + K - 1] * in;
    for (int k = 0; k < K - 1; ++k) acc += w[size_t(c) * K + k] * win[k];
    for (int k = 0; k + 1 < K - 1; ++k) win[k] = win[k + 1];
    if (K > 1) win[K - 2] = in;
    x[size_t(t) * C + c] = silu_f(acc);
  }
  for (int k = 0; k < K - 1; ++k) state[size_t(k) * C + c] = win[k];
}

// q / sqrt(dk) and k of every key head l2-normalized (eps 1e-6): one block per (token, q-or-k head).
__global__ void l2norm_heads_kernel(float* __restrict__ qkv, int C, int nk, int dk, float q_scale) {
  const int t = blockIdx.x, h = blockIdx.y;  // h < nk: query heads, then key heads
  float* x = qkv + size_t(t) * C + size_t(h) * dk;
  float ss = 0.0f;
  for (int i = threadIdx.x; i < dk; i += blockDim.x) ss += x[i] * x[i];
  ss = block_sum(ss);
  const float s = (h < nk ? q_scale : 1.0f) * rsqrtf(ss + 1e-6f);
  for (int i = threadIdx.x; i < dk; i += blockDim.x) x[i] *= s;
}

// Index of value head h's beta and alpha logits of token t (see DeltaNetArgs::ba_grouped).
__device__ __forceinline__ void ba_index(int t, int h, int nv, int r, bool grouped, int64_t* bi,
                                         int64_t* ai) {
  if (grouped) {
    const int64_t base = int64_t(t) * 2 * nv + int64_t(h / r) * 2 * r;
    *bi = base + h % r;
    *ai = base + r + h % r;
  } else {
    *bi = int64_t(t) * nv + h;
    *ai = *bi;
  }
}

// In place: beta logits -> sigmoid, alpha -> log decay a * softplus(alpha + dt_bias).
__global__ void gates_kernel(float* __restrict__ beta, float* __restrict__ alpha, int m, int nv, int r,
                             int grouped, const float* __restrict__ dt_bias, const float* __restrict__ a) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= m * nv) return;
  const int t = i / nv, h = i % nv;
  int64_t bi, ai;
  ba_index(t, h, nv, r, grouped != 0, &bi, &ai);
  float* al = grouped ? beta : alpha;
  beta[bi] = 1.0f / (1.0f + __expf(-beta[bi]));
  const float x = al[ai] + dt_bias[h];
  al[ai] = a[h] * (x > 20.0f ? x : log1pf(__expf(x)));
}

struct RuleArgs {
  const float* qkv;  // rows of C: q | k | v (conv'ed, normalized)
  const float* beta;
  const float* alpha;  // log decays (== beta's buffer when grouped)
  float* out;          // rows of value_dim
  float* S;            // nv x dk x dv
  int m, C, nk, nv, dk, dv, r, grouped, v_tiled;
  int t_base;  // the token index of row 0 in the beta / alpha layout
};

// The recurrent delta rule: block = one value head, thread j = column j of its state, tokens in order.
__global__ void delta_rule_kernel(RuleArgs a) {
  extern __shared__ float sh[];  // q (dk) | k (dk)
  const int h = blockIdx.x, j = threadIdx.x;
  const int kh = a.v_tiled ? h % a.nk : h / a.r;
  const int kd = a.nk * a.dk, vd = a.nv * a.dv;
  float* S = a.S + size_t(h) * a.dk * a.dv;
  float* qs = sh;
  float* ks = sh + a.dk;
  for (int t = 0; t < a.m; ++t) {
    const float* row = a.qkv + size_t(t) * a.C;
    __syncthreads();
    for (int i = j; i < a.dk; i += blockDim.x) {
      qs[i] = row[size_t(kh) * a.dk + i];
      ks[i] = row[kd + size_t(kh) * a.dk + i];
    }
    __syncthreads();
    if (j >= a.dv) continue;
    int64_t bi, ai;
    ba_index(a.t_base + t, h, a.nv, a.r, a.grouped != 0, &bi, &ai);
    const float beta = a.beta[bi], decay = __expf((a.grouped ? a.beta : a.alpha)[ai]);
    float kv = 0.0f;
    for (int i = 0; i < a.dk; ++i) kv += S[size_t(i) * a.dv + j] * decay * ks[i];
    const float delta = (row[2 * kd + size_t(h) * a.dv + j] - kv) * beta;
    float o = 0.0f;
    for (int i = 0; i < a.dk; ++i) {
      const float s = S[size_t(i) * a.dv + j] * decay + ks[i] * delta;
      S[size_t(i) * a.dv + j] = s;
      o += s * qs[i];
    }
    a.out[size_t(t) * vd + size_t(h) * a.dv + j] = o;
  }
}

// out = rms_norm(out) * w * silu(z) per (token, value head).
__global__ void gated_norm_kernel(float* __restrict__ out, const float* __restrict__ z,
                                  const float* __restrict__ w, int nv, int dv, float eps) {
  const int t = blockIdx.x, h = blockIdx.y;
  float* o = out + (size_t(t) * nv + h) * dv;
  const float* zz = z + (size_t(t) * nv + h) * dv;
  float ss = 0.0f;
  for (int i = threadIdx.x; i < dv; i += blockDim.x) ss += o[i] * o[i];
  ss = block_sum(ss);
  const float s = rsqrtf(ss / float(dv) + eps);
  for (int i = threadIdx.x; i < dv; i += blockDim.x) o[i] = o[i] * s * w[i] * silu_f(zz[i]);
}

int block_for(int n) {
  return std::min(1024, std::max(32, (n + 31) / 32 * 32));
}

}  // namespace

void split_heads(const float* x, float* a, float* b, int m, int n_heads, int hd, cudaStream_t st) {
  const int64_t total = int64_t(m) * n_heads * hd;
  if (total == 0) return;
  split_heads_kernel<<<unsigned((total + 255) / 256), 256, 0, st>>>(x, a, b, int64_t(m) * n_heads, hd);
  QL_CHECK_LAUNCH();
}

void sigmoid_mul(float* y, const float* g, int64_t n, cudaStream_t st) {
  if (n == 0) return;
  sigmoid_mul_kernel<<<unsigned((n + 255) / 256), 256, 0, st>>>(y, g, n);
  QL_CHECK_LAUNCH();
}

void delta_net(const DeltaNetDev& d, int m, cudaStream_t st) {
  const DeltaNetArgs& a = *d.args;
  const int C = a.conv_dim(), K = a.kernel, nk = a.n_k_heads, nv = a.n_v_heads, dk = a.head_k_dim,
            dv = a.head_v_dim, r = nv / nk;
  if (K < 1 || K > kMaxKernel) throw Unsupported("CUDA delta_net: conv kernels longer than 8 taps");
  if (dv > 1024) throw Unsupported("CUDA delta_net: value heads wider than 1024");
  const int grouped = a.ba_grouped ? 1 : 0;
  // Conv and silu.
  if (a.rows == nullptr) {
    conv_sequence_kernel<<<unsigned((C + 127) / 128), 128, 0, st>>>(a.qkv, m, C, K, d.conv_w, a.state.conv);
    QL_CHECK_LAUNCH();
  } else {
    for (int t = 0; t < m; ++t) {
      conv_sequence_kernel<<<unsigned((C + 127) / 128), 128, 0, st>>>(a.qkv + size_t(t) * C, 1, C, K,
                                                                      d.conv_w, a.rows[t].conv);
      QL_CHECK_LAUNCH();
    }
  }
  l2norm_heads_kernel<<<dim3(unsigned(m), unsigned(2 * nk)), block_for(std::min(dk, 256)), 0, st>>>(
      a.qkv, C, nk, dk, 1.0f / sqrtf(float(dk)));
  QL_CHECK_LAUNCH();
  gates_kernel<<<unsigned((m * nv + 255) / 256), 256, 0, st>>>(a.beta, a.alpha, m, nv, r, grouped, d.dt_bias,
                                                               d.a);
  QL_CHECK_LAUNCH();

  RuleArgs ra{};
  ra.beta = a.beta;
  ra.alpha = grouped ? a.beta : a.alpha;
  ra.C = C;
  ra.nk = nk;
  ra.nv = nv;
  ra.dk = dk;
  ra.dv = dv;
  ra.r = r;
  ra.grouped = grouped;
  ra.v_tiled = a.v_tiled ? 1 : 0;
  const size_t shmem = size_t(2) * dk * sizeof(float);
  const int threads = block_for(dv);
  if (a.rows == nullptr) {
    ra.qkv = a.qkv;
    ra.out = a.out;
    ra.S = a.state.ssm;
    ra.m = m;
    ra.t_base = 0;
    delta_rule_kernel<<<unsigned(nv), threads, shmem, st>>>(ra);
    QL_CHECK_LAUNCH();
  } else {
    for (int t = 0; t < m; ++t) {
      ra.qkv = a.qkv + size_t(t) * C;
      ra.out = a.out + size_t(t) * a.value_dim();
      ra.S = a.rows[t].ssm;
      ra.m = 1;
      ra.t_base = t;
      delta_rule_kernel<<<unsigned(nv), threads, shmem, st>>>(ra);
      QL_CHECK_LAUNCH();
    }
  }
  gated_norm_kernel<<<dim3(unsigned(m), unsigned(nv)), block_for(std::min(dv, 256)), 0, st>>>(
      a.out, a.z, d.norm_w, nv, dv, a.eps);
  QL_CHECK_LAUNCH();
}

}  // namespace qleap::cuda
