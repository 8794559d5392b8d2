// Single-pass float32 CPU kernels for the closed-form KI and cross-entropy terms (see __init__.py beside it).
//
// Each row of logits is read once from memory: a block of it is small enough to stay in the L1 cache,
// its maximum is taken first, and the running sums of earlier blocks are rescaled when the maximum grows
// (an online softmax). Written with ATen's vector type (at::vec::Vectorized) for the instruction set chosen at
// build time. The exponentials use a polynomial of degree 6 on the reduced argument (about 2 ulp); every argument
// here is at most 0 (a logit minus its row maximum or logsumexp), so only underflow needs care. Rows are shared
// among torch's threads. Per-block sums are float32 in vector lanes, across blocks double.

#include <torch/extension.h>

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

namespace {

using Vec = at::vec::Vectorized<float>;
using IVec = at::vec::Vectorized<int32_t>;
constexpr int64_t kLanes = Vec::size();
constexpr int64_t kBlock = 2048;  // 8 KB of each row: two rows' blocks stay in a 32 KB L1 cache
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// which exponentials of the student the tempered terms need: tau = 1 (one), tau = 2 (exp(z / 2) and its square),
// tau = 1/2 (exp(z) and its square), any other (two)
enum class Tempering { kNone, kSquare, kRoot, kGeneral };

// calls f with the Tempering of `temperature` as a compile-time constant
template <typename F>
void with_tempering(double temperature, F&& f) {
  if (temperature == 1.0) {
    f(std::integral_constant<Tempering, Tempering::kNone>{});
  } else if (temperature == 2.0) {
    f(std::integral_constant<Tempering, Tempering::kSquare>{});
  } else if (temperature == 0.5) {
    f(std::integral_constant<Tempering, Tempering::kRoot>{});
  } else {
    f(std::integral_constant<Tempering, Tempering::kGeneral>{});
  }
}

// exp(x) for x <= ~0: 2^n * p(r) with x = n ln2 + r, |r| <= ln2 / 2, p of degree 6; 0 below float's range,
// NaN for NaN.
inline Vec exp_neg(const Vec& x) {
  const Vec shifted = at::vec::fmadd(x, Vec(1.44269504088896341f), Vec(12582912.0f));  // + 1.5 * 2^23 rounds
  const Vec n = shifted - Vec(12582912.0f);
  Vec r = at::vec::fmadd(n, Vec(-0.693359375f), x);
  r = at::vec::fmadd(n, Vec(2.12194440e-4f), r);
  Vec p = at::vec::fmadd(Vec(1.0f / 720.0f), r, Vec(1.0f / 120.0f));
  p = at::vec::fmadd(p, r, Vec(1.0f / 24.0f));
  p = at::vec::fmadd(p, r, Vec(1.0f / 6.0f));
  p = at::vec::fmadd(p, r, Vec(0.5f));
  p = at::vec::fmadd(p, r, Vec(1.0f));
  p = at::vec::fmadd(p, r, Vec(1.0f));
  // the integer n sits in the low mantissa bits of `shifted`; moved into the exponent it is the float 2^n
  const IVec bits = (at::vec::cast<int32_t>(shifted) - IVec(0x4B400000 - 127)) << IVec(23);
  return Vec::blendv(p * at::vec::cast<float>(bits), Vec(0.0f), x < Vec(-87.3f));
}

inline double lane_sum(const Vec& v) {
  float lanes[kLanes];
  v.store(lanes);
  double total = 0;
  for (int64_t i = 0; i < kLanes; ++i) total += lanes[i];
  return total;
}

inline float lane_max(const Vec& v) {
  float lanes[kLanes];
  v.store(lanes);
  float peak = kNegInf;
  for (int64_t i = 0; i < kLanes; ++i) peak = std::max(peak, lanes[i]);
  return peak;
}

// lanes past `count` (the row's end) set to `fill`
inline Vec load(const float* x, int64_t count, float fill) {
  return count >= kLanes ? Vec::loadu(x) : Vec::set(Vec(fill), Vec::loadu(x, count), count);
}

inline float block_max(const float* x, int64_t n, float scale) {
  Vec peak(kNegInf);
  for (int64_t i = 0; i < n; i += kLanes) peak = at::vec::maximum(peak, load(x + i, n - i, kNegInf) * Vec(scale));
  return lane_max(peak);
}

// adds exp(x - m) to s1 and exp((x - m) / tau) to s2 (s1 alone at tau = 1), with one exponential unless tau is other
// than 1, 2 and 1/2
template <Tempering mode>
inline void add_exponentials(const Vec& x, const Vec& m, const Vec& inv_tau, Vec& s1, Vec& s2) {
  if constexpr (mode == Tempering::kNone) {
    s1 += exp_neg(x - m);
  } else if constexpr (mode == Tempering::kSquare) {
    const Vec e = exp_neg((x - m) * inv_tau);
    s2 += e;
    s1 = at::vec::fmadd(e, e, s1);
  } else if constexpr (mode == Tempering::kRoot) {
    const Vec e = exp_neg(x - m);
    s1 += e;
    s2 = at::vec::fmadd(e, e, s2);
  } else {
    s1 += exp_neg(x - m);
    s2 += exp_neg((x - m) * inv_tau);
  }
}

// A row's maximum m and its sums of exp(z - m) and exp((z - m) / tau), over blocks read one after another.
struct RowSums {
  float m = kNegInf;
  double s1 = 0, s2 = 0;

  // before a block of maximum bm: earlier blocks' sums rescaled when it raises the row's maximum
  void raise(float bm, float inv_tau) {
    if (bm > m) {
      const double shift = m == kNegInf ? 0.0 : static_cast<double>(m) - bm;
      s1 = m == kNegInf ? 0.0 : s1 * std::exp(shift);
      s2 = m == kNegInf ? 0.0 : s2 * std::exp(shift * inv_tau);
      m = bm;
    }
  }

  // the maximum the block's exponentials are taken against (0 while every logit so far is -inf: nothing to add)
  Vec center() const { return Vec(m == kNegInf ? 0.0f : m); }

  // max z, logsumexp z, logsumexp z / tau
  template <Tempering mode>
  void write(float* o, float inv_tau) const {
    o[0] = m;
    o[1] = static_cast<float>(m + std::log(s1));
    o[2] = static_cast<float>(m * inv_tau + std::log(mode == Tempering::kNone ? s1 : s2));
  }
};

void check_rows(const at::Tensor& x, const char* name) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.dim() == 2 && x.stride(1) == 1,
              name, " must be a float32 CPU matrix with contiguous rows");
}

// Per row of student logits z against P_T = softmax(scores * scale), columns of the returned [n, 7]:
// 0 peak max z, 1 logsumexp z, 2 logsumexp z / tau, 3 the teacher's logsumexp, 4 sum_v p_T (t_v - z_v / tau)
// with t = scores * scale, 5 the student's highest logit among the teacher's top tokens, 6 sum_v z_v.
template <Tempering mode>
void forward_kl_statistics_rows(const at::Tensor& z, const at::Tensor& scores, double scale, double temperature,
                                at::Tensor& out) {
  const int64_t rows = z.size(0), vocab = z.size(1);
  const float s = static_cast<float>(scale), inv_tau = static_cast<float>(1.0 / temperature);
  const float* zp = z.data_ptr<float>();
  const float* tp = scores.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int64_t zs = z.stride(0), ts = scores.stride(0);
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const float* zr = zp + row * zs;
      const float* tr = tp + row * ts;
      float mt = kNegInf, top = kNegInf;
      double st = 0, swt = 0, swz = 0, sz = 0;
      RowSums student;
      for (int64_t start = 0; start < vocab; start += kBlock) {
        const int64_t n = std::min(kBlock, vocab - start);
        const float* zb = zr + start;
        const float* tb = tr + start;
        const float bmt = block_max(tb, n, s), bm = block_max(zb, n, 1.0f);
        if (bmt > mt) {
          const double f = mt == kNegInf ? 0.0 : std::exp(static_cast<double>(mt) - bmt);
          st *= f, swt *= f, swz *= f, mt = bmt, top = kNegInf;
        }
        student.raise(bm, inv_tau);
        Vec bst(0.0f), bswt(0.0f), bswz(0.0f), bs1(0.0f), bs2(0.0f), bsz(0.0f), btop(top);
        const Vec cmt(mt), cm = student.center(), scale_v(s), inv_tau_v(inv_tau);
        for (int64_t i = 0; i < n; i += kLanes) {
          const int64_t count = n - i;
          // past the row's end: teacher and student at -inf (no exponential, no maximum) and 0 in the products;
          // a teacher's -inf (a token it rules out) weighs 0 in p_T t too
          const Vec t = load(tb + i, count, kNegInf) * scale_v, x = load(zb + i, count, kNegInf);
          const Vec w = exp_neg(t - cmt);
          const Vec t0 = Vec::blendv(t, Vec(0.0f), t == Vec(kNegInf)), x0 = load(zb + i, count, 0.0f);
          bst += w;
          bswt = at::vec::fmadd(w, t0, bswt);
          bswz = at::vec::fmadd(w, x0, bswz);
          btop = at::vec::maximum(btop, Vec::blendv(Vec(kNegInf), x, t == cmt));
          add_exponentials<mode>(x, cm, inv_tau_v, bs1, bs2);
          bsz += x0;
        }
        st += lane_sum(bst), swt += lane_sum(bswt), swz += lane_sum(bswz), student.s1 += lane_sum(bs1);
        student.s2 += lane_sum(bs2), sz += lane_sum(bsz), top = lane_max(btop);
      }
      float* o = op + row * 7;
      student.write<mode>(o, inv_tau);
      o[3] = static_cast<float>(mt + std::log(st));
      o[4] = static_cast<float>((swt - swz * inv_tau) / st);
      o[5] = top;
      o[6] = static_cast<float>(sz);
    }
  });
}

at::Tensor forward_kl_statistics(const at::Tensor& z, const at::Tensor& scores, double scale, double temperature) {
  check_rows(z, "logits");
  check_rows(scores, "teacher scores");
  TORCH_CHECK(z.sizes() == scores.sizes(), "logits and teacher scores must have one shape");
  auto out = at::empty({z.size(0), 7}, z.options());
  with_tempering(temperature, [&](auto mode) {
    forward_kl_statistics_rows<decltype(mode)::value>(z, scores, scale, temperature, out);
  });
  return out;
}

// z <- (1 - alpha) softmax(z) + alpha tau (softmax(z / tau) - P_T), in place; stats from forward_kl_statistics.
template <Tempering mode>
void forward_kl_gradient_rows(at::Tensor& z, const at::Tensor& scores, double scale, const at::Tensor& stats,
                              double alpha, double temperature) {
  const int64_t rows = z.size(0), vocab = z.size(1);
  const float s = static_cast<float>(scale), inv_tau = static_cast<float>(1.0 / temperature);
  float* zp = z.data_ptr<float>();
  const float* tp = scores.data_ptr<float>();
  const float* sp = stats.data_ptr<float>();
  const int64_t zs = z.stride(0), ts = scores.stride(0);
  const float step = static_cast<float>(alpha * temperature), keep = static_cast<float>(1.0 - alpha);
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      float* zr = zp + row * zs;
      const float* tr = tp + row * ts;
      const float lse = sp[row * 7 + 1], tlse = sp[row * 7 + 2], target_lse = sp[row * 7 + 3];
      // tau = 2: softmax(z) = softmax(z / 2)^2 exp(2 lse_2 - lse); tau = 1/2: softmax(2 z) = softmax(z)^2
      // exp(2 lse - lse_1/2): one exponential instead of two
      const float square_scale = static_cast<float>(
          mode == Tempering::kRoot ? std::exp(2.0 * lse - tlse) : std::exp(2.0 * tlse - lse));
      const Vec s_v(s), inv_tau_v(inv_tau), lse_v(lse), tlse_v(tlse), target_lse_v(target_lse);
      const Vec square_scale_v(square_scale), keep_v(keep), step_v(step);
      for (int64_t i = 0; i < vocab; i += kLanes) {
        const int64_t count = std::min(kLanes, vocab - i);
        const Vec x = Vec::loadu(zr + i, count);
        const Vec teacher = exp_neg(Vec::loadu(tr + i, count) * s_v - target_lse_v);
        Vec plain, tempered;
        if constexpr (mode == Tempering::kNone) {
          plain = tempered = exp_neg(x - lse_v);
        } else if constexpr (mode == Tempering::kSquare) {
          tempered = exp_neg(x * inv_tau_v - tlse_v);
          plain = tempered * tempered * square_scale_v;
        } else if constexpr (mode == Tempering::kRoot) {
          plain = exp_neg(x - lse_v);
          tempered = plain * plain * square_scale_v;
        } else {
          plain = exp_neg(x - lse_v);
          tempered = exp_neg(x * inv_tau_v - tlse_v);
        }
        at::vec::fmadd(step_v, tempered - teacher, keep_v * plain).store(zr + i, count);
      }
    }
  });
}

void forward_kl_gradient_(at::Tensor& z, const at::Tensor& scores, double scale, const at::Tensor& stats,
                          double alpha, double temperature) {
  check_rows(z, "logits");
  check_rows(scores, "teacher scores");
  TORCH_CHECK(z.sizes() == scores.sizes(), "logits and teacher scores must have one shape");
  TORCH_CHECK(stats.is_contiguous() && stats.size(0) == z.size(0) && stats.size(1) == 7, "stats must be the "
              "[rows, 7] output of forward_kl_statistics");
  with_tempering(temperature, [&](auto mode) {
    forward_kl_gradient_rows<decltype(mode)::value>(z, scores, scale, stats, alpha, temperature);
  });
}

// Per row of logits z (some may be -inf: masked tokens), columns of the returned [n, 4]: 0 max z, 1 logsumexp z,
// 2 logsumexp z / tau, 3 sum_v z_v. A row with every logit at -inf has logsumexps -inf.
template <Tempering mode>
void row_statistics_rows(const at::Tensor& z, double temperature, at::Tensor& out) {
  const int64_t rows = z.size(0), vocab = z.size(1);
  const float inv_tau = static_cast<float>(1.0 / temperature);
  const float* zp = z.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int64_t zs = z.stride(0);
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const float* zr = zp + row * zs;
      RowSums sums;
      double sz = 0;
      for (int64_t start = 0; start < vocab; start += kBlock) {
        const int64_t n = std::min(kBlock, vocab - start);
        const float* zb = zr + start;
        sums.raise(block_max(zb, n, 1.0f), inv_tau);
        Vec bs1(0.0f), bs2(0.0f), bsz(0.0f);
        const Vec cm = sums.center(), inv_tau_v(inv_tau);
        for (int64_t i = 0; i < n; i += kLanes) {
          add_exponentials<mode>(load(zb + i, n - i, kNegInf), cm, inv_tau_v, bs1, bs2);
          bsz += load(zb + i, n - i, 0.0f);
        }
        sums.s1 += lane_sum(bs1), sums.s2 += lane_sum(bs2), sz += lane_sum(bsz);
      }
      float* o = op + row * 4;
      sums.write<mode>(o, inv_tau);
      o[3] = static_cast<float>(sz);
    }
  });
}

at::Tensor row_statistics(const at::Tensor& z, double temperature) {
  check_rows(z, "logits");
  auto out = at::empty({z.size(0), 4}, z.options());
  with_tempering(temperature, [&](auto mode) { row_statistics_rows<decltype(mode)::value>(z, temperature, out); });
  return out;
}

// z <- keep exp(z - lse) + coef exp(z / tau - shift) + offset, in place, with per-row lse, shift and coef [n]:
// softmax(z) (keep 1, coef 0, shift = lse, tau 1) or a top-K target's gradient off its top-K. tau = 1 and 2 take
// one exponential: exp(z - lse) = e exp(shift - lse) or e^2 exp(2 shift - lse) with e = exp(z / tau - shift).
template <Tempering mode>
void softmax_mix_rows(at::Tensor& z, const at::Tensor& lse, const at::Tensor& shift, const at::Tensor& coef,
                      double keep, double offset, double temperature) {
  const int64_t rows = z.size(0), vocab = z.size(1);
  const float inv_tau = static_cast<float>(1.0 / temperature);
  float* zp = z.data_ptr<float>();
  const float *lp = lse.data_ptr<float>(), *sp = shift.data_ptr<float>(), *cp = coef.data_ptr<float>();
  const int64_t zs = z.stride(0);
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      float* zr = zp + row * zs;
      const double l = lp[row], sh = sp[row];
      // exp(z - lse) from the one exponential: e exp(shift - lse) (tau = 1), e^2 exp(2 shift - lse) (tau = 2), and
      // at tau = 1/2 with r = exp(z - shift / 2): e = r^2, exp(z - lse) = r exp(shift / 2 - lse)
      const double ratio = mode == Tempering::kNone     ? std::exp(sh - l)
                           : mode == Tempering::kSquare ? std::exp(2.0 * sh - l)
                           : mode == Tempering::kRoot   ? std::exp(0.5 * sh - l)
                                                        : 1.0;
      const Vec keep_v(static_cast<float>(keep * ratio));
      const Vec lse_v(static_cast<float>(l)), shift_v(static_cast<float>(sh)), coef_v(cp[row]);
      const Vec half_shift_v(static_cast<float>(0.5 * sh)), inv_tau_v(inv_tau), offset_v(static_cast<float>(offset));
      for (int64_t i = 0; i < vocab; i += kLanes) {
        const int64_t count = std::min(kLanes, vocab - i);
        const Vec x = Vec::loadu(zr + i, count);
        Vec e, plain;
        if constexpr (mode == Tempering::kNone) {
          plain = e = exp_neg(x - shift_v);
        } else if constexpr (mode == Tempering::kSquare) {
          e = exp_neg(x * inv_tau_v - shift_v);
          plain = e * e;
        } else if constexpr (mode == Tempering::kRoot) {
          plain = exp_neg(x - half_shift_v);
          e = plain * plain;
        } else {
          e = exp_neg(x * inv_tau_v - shift_v);
          plain = exp_neg(x - lse_v);
        }
        at::vec::fmadd(keep_v, plain, at::vec::fmadd(coef_v, e, offset_v)).store(zr + i, count);
      }
    }
  });
}

void softmax_mix_(at::Tensor& z, const at::Tensor& lse, const at::Tensor& shift, const at::Tensor& coef, double keep,
                  double offset, double temperature) {
  check_rows(z, "logits");
  for (const at::Tensor* row : {&lse, &shift, &coef}) {
    TORCH_CHECK(row->scalar_type() == at::kFloat && row->is_contiguous() && row->numel() == z.size(0),
                "lse, shift and coef must be contiguous float32 vectors with one value per row of the logits");
  }
  with_tempering(temperature, [&](auto mode) {
    softmax_mix_rows<decltype(mode)::value>(z, lse, shift, coef, keep, offset, temperature);
  });
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward_kl_statistics", &forward_kl_statistics);
  m.def("forward_kl_gradient_", &forward_kl_gradient_);
  m.def("row_statistics", &row_statistics);
  m.def("softmax_mix_", &softmax_mix_);
}
