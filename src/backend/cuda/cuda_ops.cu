// Norms, activations, RoPE + KV store, and attention over the f16 device cache.
#include <cfloat>

#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/cuda_reduce.cuh"
#include "core/error.h"

namespace qleap::cuda {
namespace {

__global__ void rms_norm_kernel(const float* __restrict__ x, const float* __restrict__ w,
                                float* __restrict__ y, int n, float eps) {
  const float* xr = x + size_t(blockIdx.x) * n;
  float* yr = y + size_t(blockIdx.x) * n;
  float ss = 0.0f;
  for (int i = threadIdx.x; i < n; i += blockDim.x) ss += xr[i] * xr[i];
  ss = block_sum(ss);
  const float s = rsqrtf(ss / float(n) + eps);
  for (int i = threadIdx.x; i < n; i += blockDim.x) yr[i] = xr[i] * s * (w ? w[i] : 1.0f);
}

__global__ void silu_mul_kernel(float* __restrict__ g, const float* __restrict__ u, int64_t n) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) {
    const float a = g[i];
    g[i] = a / (1.0f + __expf(-a)) * u[i];
  }
}

// gelu_tanh(a) = a / (1 + exp(-2 sqrt(2/pi) (a + 0.044715 a^3))), as on the CPU (backend/cpu/ops.h).
__global__ void gelu_mul_kernel(float* __restrict__ g, const float* __restrict__ u, int64_t n) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) {
    const float a = g[i];
    g[i] = a / (1.0f + __expf(-1.5957691216057308f * (a + 0.044715f * a * a * a))) * u[i];
  }
}

// One block per (token, head); heads [0, n_heads) are queries, the rest keys (which also store the
// matching value head). blockDim.x >= hd, a multiple of 32.
__global__ void qkv_post_kernel(QkvPostArgs a, const int* __restrict__ pos0) {
  extern __shared__ float buf[];
  const int t = blockIdx.x, hidx = blockIdx.y, i = threadIdx.x, hd = a.hd;
  const int pos = *pos0 + t;
  const bool isq = hidx < a.n_heads;
  const int h = isq ? hidx : hidx - a.n_heads;
  const int qdim = a.n_heads * hd, kvdim = a.n_kv_heads * hd;
  const float* src = isq ? a.q + size_t(t) * qdim + h * hd : a.k + size_t(t) * kvdim + h * hd;
  const float* bias = isq ? a.bq : a.bk;
  const float* nw = isq ? a.q_norm : a.k_norm;
  float val = 0.0f;
  if (i < hd) val = src[i] + (bias ? bias[h * hd + i] : 0.0f);
  if (nw) {
    const float ss = block_sum(val * val);
    if (i < hd) val = val * rsqrtf(ss / float(hd) + a.eps) * nw[i];
  }
  if (i < hd) buf[i] = val;
  __syncthreads();
  if (i < a.n_rot) {
    const float* cs = a.rope + size_t(pos) * a.n_rot;
    if (a.neox) {
      const int half = a.n_rot / 2, p = i % half;
      const float c = cs[2 * p], s = cs[2 * p + 1];
      val = i < half ? buf[i] * c - buf[i + half] * s : buf[i - half] * s + buf[i] * c;
    } else {
      const int p = i / 2;
      const float c = cs[2 * p], s = cs[2 * p + 1];
      val = (i & 1) == 0 ? buf[i] * c - buf[i + 1] * s : buf[i - 1] * s + buf[i] * c;
    }
  }
  if (i >= hd) return;
  if (isq) {
    a.q[size_t(t) * qdim + h * hd + i] = val;
  } else if (a.k_cache) {
    const size_t o = size_t(pos) * kvdim + h * hd + i;
    a.k_cache[o] = __float2half(val);
    a.v_cache[o] = __float2half(a.v[size_t(t) * kvdim + h * hd + i] + (a.bv ? a.bv[h * hd + i] : 0.0f));
  } else {
    // In place: every thread read its source element before the barrier above.
    const size_t o = size_t(t) * kvdim + h * hd + i;
    a.k[o] = val;
    if (a.bv) a.v[o] += a.bv[h * hd + i];
  }
}

__global__ void add_kernel(float* __restrict__ y, const float* __restrict__ x, int64_t n) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) y[i] += x[i];
}

__global__ void kv_store_f16_kernel(const float* __restrict__ k, const float* __restrict__ v,
                                    __half* __restrict__ kc, __half* __restrict__ vc, int kvdim,
                                    const int* __restrict__ pos0, int ring) {
  const int t = blockIdx.x;
  const size_t dst = size_t((*pos0 + t) % ring) * kvdim, src = size_t(t) * kvdim;
  for (int i = threadIdx.x; i < kvdim; i += blockDim.x) {
    kc[dst + i] = __float2half(k[src + i]);
    vc[dst + i] = __float2half(v[src + i]);
  }
}

constexpr int kAttnWarps = 4;
constexpr int kMaxG = 8;  // query heads per block (larger GQA groups use several blocks)

// Flash-decoding style: block (kv head x query-head chunk, split, token). Each warp walks keys of
// the split with an online softmax for up to 8 query heads sharing the key; lanes split head_dim
// (E elements each). The warps' states merge in shared memory into one partial per split.
template <int E>
__global__ void __launch_bounds__(kAttnWarps * 32)
    attn_split_kernel(AttnArgs a, const int* __restrict__ pos0) {
  const int G = a.n_heads / a.n_kv_heads, ngc = (G + kMaxG - 1) / kMaxG;
  const int kvh = blockIdx.x / ngc, g0 = (blockIdx.x % ngc) * kMaxG, ng = min(kMaxG, G - g0);
  const int split = blockIdx.y, t = blockIdx.z;
  const int pos = *pos0 + t, hd = a.hd;
  const int lo = a.window > 0 ? max(0, pos - a.window + 1) : 0;
  const int kbeg = lo + split * a.split_len, kend = min(kbeg + a.split_len, pos + 1);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int qdim = a.n_heads * hd, kvdim = a.n_kv_heads * hd;

  float q[kMaxG][E], mx[kMaxG], l[kMaxG], acc[kMaxG][E];
#pragma unroll
  for (int g = 0; g < kMaxG; ++g) {
    mx[g] = -FLT_MAX, l[g] = 0.0f;
#pragma unroll
    for (int e = 0; e < E; ++e) {
      const int d = lane * E + e;
      q[g][e] =
          (g < ng && d < hd) ? a.q[size_t(t) * qdim + size_t(kvh * G + g0 + g) * hd + d] * a.scale : 0.0f;
      acc[g][e] = 0.0f;
    }
  }
  const bool active = lane * E < hd;  // lanes past head_dim hold zeros
  for (int p = kbeg + warp; p < kend; p += kAttnWarps) {
    const size_t slot = size_t(p < a.ring ? p : p % a.ring);
    const __half* kr = a.k_cache + slot * kvdim + size_t(kvh) * hd + lane * E;
    const __half* vr = a.v_cache + slot * kvdim + size_t(kvh) * hd + lane * E;
    float kf[E], vf[E];
    bool done = false;
    if constexpr (E == 4) {
      if (active && (hd & 3) == 0) {
        const uint2 kk = *reinterpret_cast<const uint2*>(kr), vv = *reinterpret_cast<const uint2*>(vr);
        const float2 k0 = __half22float2(*reinterpret_cast<const __half2*>(&kk.x));
        const float2 k1 = __half22float2(*reinterpret_cast<const __half2*>(&kk.y));
        const float2 v0 = __half22float2(*reinterpret_cast<const __half2*>(&vv.x));
        const float2 v1 = __half22float2(*reinterpret_cast<const __half2*>(&vv.y));
        kf[0] = k0.x, kf[1] = k0.y, kf[2] = k1.x, kf[3] = k1.y;
        vf[0] = v0.x, vf[1] = v0.y, vf[2] = v1.x, vf[3] = v1.y;
        done = true;
      }
    }
    if (!done) {
#pragma unroll
      for (int e = 0; e < E; ++e) {
        const bool ok = lane * E + e < hd;
        kf[e] = ok ? __half2float(kr[e]) : 0.0f;
        vf[e] = ok ? __half2float(vr[e]) : 0.0f;
      }
    }
#pragma unroll
    for (int g = 0; g < kMaxG; ++g) {
      if (g < ng) {
        float s = 0.0f;
#pragma unroll
        for (int e = 0; e < E; ++e) s += q[g][e] * kf[e];
        s = warp_sum(s);
        if (a.softcap > 0.0f) s = a.softcap * tanhf(s / a.softcap);
        const float mn = fmaxf(mx[g], s);
        const float corr = __expf(mx[g] - mn), pe = __expf(s - mn);
        l[g] = l[g] * corr + pe;
#pragma unroll
        for (int e = 0; e < E; ++e) acc[g][e] = acc[g][e] * corr + pe * vf[e];
        mx[g] = mn;
      }
    }
  }
  __shared__ float sm_m[kAttnWarps][kMaxG], sm_l[kAttnWarps][kMaxG];
  __shared__ float sm_acc[kAttnWarps][kMaxG][32 * E];
  if (lane == 0) {
#pragma unroll
    for (int g = 0; g < kMaxG; ++g) sm_m[warp][g] = mx[g], sm_l[warp][g] = l[g];
  }
#pragma unroll
  for (int g = 0; g < kMaxG; ++g) {
#pragma unroll
    for (int e = 0; e < E; ++e) sm_acc[warp][g][lane * E + e] = acc[g][e];
  }
  __syncthreads();
  const int stride = hd + 2;
  for (int g = warp; g < ng; g += kAttnWarps) {
    float M = -FLT_MAX;
#pragma unroll
    for (int w = 0; w < kAttnWarps; ++w) M = fmaxf(M, sm_m[w][g]);
    float f[kAttnWarps], L = 0.0f;
#pragma unroll
    for (int w = 0; w < kAttnWarps; ++w) {
      f[w] = sm_l[w][g] > 0.0f ? __expf(sm_m[w][g] - M) : 0.0f;
      L += f[w] * sm_l[w][g];
    }
    const int head = kvh * G + g0 + g;
    float* out = a.partial + ((size_t(t) * a.n_heads + head) * a.n_splits + split) * stride;
    if (lane == 0) out[0] = M, out[1] = L;
    for (int d = lane; d < hd; d += 32) {
      float s = 0.0f;
#pragma unroll
      for (int w = 0; w < kAttnWarps; ++w) s += f[w] * sm_acc[w][g][d];
      out[2 + d] = s;
    }
  }
}

// Merges the splits of one (token, head).
__global__ void attn_combine_kernel(AttnArgs a, const int* __restrict__ pos0) {
  const int t = blockIdx.x / a.n_heads, h = blockIdx.x % a.n_heads, hd = a.hd, stride = hd + 2;
  const int pos = *pos0 + t;
  const int lo = a.window > 0 ? max(0, pos - a.window + 1) : 0;
  const int nvalid = min(a.n_splits, (pos - lo) / a.split_len + 1);
  const float* base = a.partial + (size_t(t) * a.n_heads + h) * a.n_splits * stride;
  float M = -FLT_MAX;
  for (int s = 0; s < nvalid; ++s) {
    if (base[s * stride + 1] > 0.0f) M = fmaxf(M, base[s * stride]);
  }
  float L = 0.0f;
  for (int s = 0; s < nvalid; ++s) {
    const float l = base[s * stride + 1];
    if (l > 0.0f) L += l * __expf(base[s * stride] - M);
  }
  float inv = 1.0f / L;
  if (a.sinks != nullptr && a.sinks[h] > -FLT_MAX && L > 0.0f) {
    // The sink joins the denominator; rescaled to the larger of M and the sink so neither overflows.
    const float sk = a.sinks[h];
    if (sk <= M) {
      inv = 1.0f / (L + __expf(sk - M));
    } else {
      const float c = __expf(M - sk);
      inv = c / (L * c + 1.0f);
    }
  }
  for (int d = threadIdx.x; d < hd; d += blockDim.x) {
    float acc = 0.0f;
    for (int s = 0; s < nvalid; ++s) {
      const float l = base[s * stride + 1];
      if (l > 0.0f) acc += base[s * stride + 2 + d] * __expf(base[s * stride] - M);
    }
    a.out[size_t(t) * a.n_heads * hd + size_t(h) * hd + d] = acc * inv;
  }
}

}  // namespace

void rms_norm(const float* x, const float* w, float* y, int m, int n, float eps, cudaStream_t st) {
  rms_norm_kernel<<<m, n >= 1024 ? 512 : 128, 0, st>>>(x, w, y, n, eps);
  QL_CHECK_LAUNCH();
}

void silu_mul(float* g, const float* u, int64_t n, cudaStream_t st) {
  silu_mul_kernel<<<unsigned((n + 255) / 256), 256, 0, st>>>(g, u, n);
  QL_CHECK_LAUNCH();
}

void gelu_mul(float* g, const float* u, int64_t n, cudaStream_t st) {
  gelu_mul_kernel<<<unsigned((n + 255) / 256), 256, 0, st>>>(g, u, n);
  QL_CHECK_LAUNCH();
}

void qkv_post(const QkvPostArgs& a, int m, const int* pos0, cudaStream_t st) {
  if (a.hd > 1024) throw Unsupported("CUDA: head_dim > 1024");
  const int threads = (a.hd + 31) / 32 * 32;
  qkv_post_kernel<<<dim3(m, a.n_heads + a.n_kv_heads), threads, a.hd * sizeof(float), st>>>(a, pos0);
  QL_CHECK_LAUNCH();
}

void add(float* y, const float* x, int64_t n, cudaStream_t st) {
  add_kernel<<<unsigned((n + 255) / 256), 256, 0, st>>>(y, x, n);
  QL_CHECK_LAUNCH();
}

void kv_store_f16(const float* k, const float* v, __half* k_cache, __half* v_cache, int m, int kv_dim,
                  const int* pos0, int ring, cudaStream_t st) {
  kv_store_f16_kernel<<<m, kv_dim >= 256 ? 256 : 64, 0, st>>>(k, v, k_cache, v_cache, kv_dim, pos0, ring);
  QL_CHECK_LAUNCH();
}

void attention(const AttnArgs& a, int m, const int* pos0, cudaStream_t st) {
  const int G = a.n_heads / a.n_kv_heads;
  const dim3 grid(a.n_kv_heads * ((G + kMaxG - 1) / kMaxG), a.n_splits, m);
  if (a.hd <= 32) {
    attn_split_kernel<1><<<grid, kAttnWarps * 32, 0, st>>>(a, pos0);
  } else if (a.hd <= 64) {
    attn_split_kernel<2><<<grid, kAttnWarps * 32, 0, st>>>(a, pos0);
  } else if (a.hd <= 128) {
    attn_split_kernel<4><<<grid, kAttnWarps * 32, 0, st>>>(a, pos0);
  } else if (a.hd <= 256) {
    attn_split_kernel<8><<<grid, kAttnWarps * 32, 0, st>>>(a, pos0);
  } else {
    throw Unsupported("CUDA attention: head_dim > 256");
  }
  QL_CHECK_LAUNCH();
  attn_combine_kernel<<<m * a.n_heads, a.hd >= 128 ? 128 : 32, 0, st>>>(a, pos0);
  QL_CHECK_LAUNCH();
}

}  // namespace qleap::cuda
