// FairLoss forward and backward for (M, C, L) logits on CPU, one fused pass per direction.
//
// Built on first use by fairloss._native (torch.utils.cpp_extension), called through the
// operators fairloss::kdim_forward / fairloss::kdim_backward (fairloss._ops). Elements (one per
// (m, l)) are processed W at a time, W = at::vec::Vectorized<T>::size(), with the class dimension
// as the inner loop, so that every load reads W consecutive positions l.
//
// Forward, per element: the row maximum, log sum exp(z - max) and how many logits lie within
// `margin = -exp_floor / beta` of the maximum. SmoothMax's normalizer
// S = sum_c exp(beta * (z_c - max)) (terms under exp_floor count 0) is 1 for an element without a
// runner-up inside the margin; it is computed (a third pass over the classes, with exp only where
// some element of the block has such a runner-up) only in blocks holding an unsaturated element
// that has one. The penalty and its slope are those of fairloss._rows.penalty_and_slope, except
// that tanh(h) is computed from exp(-2h), or expm1(-2h) for small h.
//
// Backward writes g * (softmax(z) - onehot(r)) + c * exp(beta * (z - max)) - g * slope * onehot(r)
// in one pass, c = g * slope / S (so c * exp(...) = g * slope * softmax(beta * z)); the SmoothMax
// term is evaluated only in blocks where some element has c != 0, and per class only where some
// element has a term above the floor.
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/extension.h>

#include <atomic>
#include <cmath>
#include <limits>
#include <vector>

namespace {

template <typename T>
using Vec = at::vec::Vectorized<T>;

template <typename T>
bool any_lane(const Vec<T>& mask) {
  return !at::vec::VecMask<T, 1>(mask).all_zero();
}

constexpr int64_t kGrainBlocks = 16;

struct PenaltyOptions {
  int64_t ignore_index;
  double beta, scaling_factor, penalty_scale, exp_floor, saturation, sech_limit;
};

template <typename T>
void forward_kernel(const T* x, const int64_t* target, int64_t M, int64_t C, int64_t L,
                    const PenaltyOptions& o, T* loss, T* log_normalizer, T* row_max, T* slope,
                    T* beta_softmax_slope, std::atomic<int64_t>* bad_target) {
  constexpr int64_t W = Vec<T>::size();
  const int64_t blocks_per_row = (L + W - 1) / W;
  const T beta = o.beta, floor_ = o.exp_floor, margin = -o.exp_floor / o.beta;
  const T half_scale = o.scaling_factor / 2, lam = o.penalty_scale;
  const T slope_height = o.penalty_scale * o.scaling_factor / 2;
  at::parallel_for(0, M * blocks_per_row, kGrainBlocks, [&](int64_t begin, int64_t end) {
    const Vec<T> zero(T(0)), one(T(1));
    for (int64_t block = begin; block < end; ++block) {
      const int64_t m = block / blocks_per_row, l0 = (block % blocks_per_row) * W;
      const int64_t n = std::min(W, L - l0), e0 = m * L + l0;
      const T* xb = x + m * C * L + l0;
      // Row maximum, two independent chains (a max's latency bounds a single chain).
      Vec<T> mx(-std::numeric_limits<T>::infinity()), mx2 = mx;
      int64_t c = 0;
      for (; c + 1 < C; c += 2) {
        mx = at::vec::clamp_min(Vec<T>::loadu(xb + c * L, n), mx);
        mx2 = at::vec::clamp_min(Vec<T>::loadu(xb + (c + 1) * L, n), mx2);
      }
      if (c < C) mx = at::vec::clamp_min(Vec<T>::loadu(xb + c * L, n), mx);
      mx = at::vec::clamp_min(mx, mx2);
      // Cross-entropy's normalizer, and the logits within the margin (the maximum included).
      Vec<T> sum(T(0)), sum2(T(0)), near(T(0));
      const Vec<T> minus_margin(-margin);
      for (c = 0; c + 1 < C; c += 2) {
        const Vec<T> d = Vec<T>::loadu(xb + c * L, n) - mx;
        const Vec<T> d2 = Vec<T>::loadu(xb + (c + 1) * L, n) - mx;
        sum += d.exp();
        sum2 += d2.exp();
        near += Vec<T>::blendv(zero, one, d > minus_margin) +
                Vec<T>::blendv(zero, one, d2 > minus_margin);
      }
      if (c < C) {
        const Vec<T> d = Vec<T>::loadu(xb + c * L, n) - mx;
        sum += d.exp();
        near += Vec<T>::blendv(zero, one, d > minus_margin);
      }
      const Vec<T> log_sum = (sum + sum2).log();  // log sum exp(z - max)
      // The reference logit of each element.
      T mx_lanes[W], ref_lanes[W], valid_lanes[W], s_lanes[W];
      mx.store(mx_lanes);
      for (int64_t i = 0; i < W; ++i) {
        const int64_t t = i < n ? target[e0 + i] : o.ignore_index;
        const bool valid = t != o.ignore_index;
        if (valid && (t < 0 || t >= C)) {
          bad_target->store(t);
        }
        const bool usable = valid && t >= 0 && t < C;
        ref_lanes[i] = usable ? xb[t * L + i] : mx_lanes[i];
        valid_lanes[i] = usable ? T(1) : T(0);
        s_lanes[i] = T(1);
      }
      const Vec<T> z_ref = Vec<T>::loadu(ref_lanes), valid = Vec<T>::loadu(valid_lanes);
      const Vec<T> gap = mx - z_ref;  // max - z[r] >= 0
      const Vec<T> unsaturated =
          (valid > zero) & (gap * Vec<T>(half_scale) <= Vec<T>(o.saturation));
      const bool needs_normalizer = any_lane<T>(unsaturated & (near > one));
      Vec<T> S = Vec<T>::loadu(s_lanes);
      if (needs_normalizer) {
        Vec<T> terms(T(0));
        const Vec<T> beta_v(beta), floor_v(floor_);
        for (c = 0; c < C; ++c) {
          const Vec<T> a = (Vec<T>::loadu(xb + c * L, n) - mx) * beta_v;
          terms += Vec<T>::blendv(zero, one, a == zero);  // the maximum and its ties
          const Vec<T> inside = (a > floor_v) & (a < zero);
          if (any_lane<T>(inside)) {
            terms += Vec<T>::blendv(zero, at::vec::clamp_min(a, floor_v).exp(), inside);
          }
        }
        S = terms;
      }
      Vec<T> penalty = Vec<T>(lam) * valid;  // saturated: tanh = 1
      Vec<T> slope_v(T(0));
      if (any_lane<T>(unsaturated)) {
        const Vec<T> log_s = needs_normalizer ? S.log() / Vec<T>(beta) : zero;
        const Vec<T> h = Vec<T>(T(o.scaling_factor)) * (gap + log_s) / Vec<T>(T(2));
        const Vec<T> limit(o.sech_limit);
        const Vec<T> capped = Vec<T>(T(-2)) * at::vec::minimum(h, limit);
        const Vec<T> decay = capped.exp();
        const Vec<T> sech2 = Vec<T>::blendv(
            zero, Vec<T>(T(4)) * decay / ((one + decay) * (one + decay)), h < limit);
        // tanh(h) = (1 - e) / (1 + e), within 2 ulps for h >= 1/2 (a vector tanh costs more
        // than the rest of this block); below, where 1 - e cancels, -expm1(-2h) / (2 + expm1(-2h)),
        // only in the blocks that need it (expm1 is as slow as tanh).
        Vec<T> tanh_h = (one - decay) / (one + decay);
        const Vec<T> small_h = unsaturated & (h > zero) & (h < Vec<T>(T(0.5)));
        if (any_lane<T>(small_h)) {
          const Vec<T> decay_m1 = capped.expm1();
          tanh_h = Vec<T>::blendv(tanh_h, decay_m1.neg() / (Vec<T>(T(2)) + decay_m1), small_h);
        }
        penalty = Vec<T>::blendv(penalty, Vec<T>(lam) * tanh_h, unsaturated);
        // A clear winner (reference is the maximum, no other logit inside the margin) has
        // softmax(beta * z) = onehot(r): no gradient from the penalty.
        const Vec<T> clear_winner = (gap == zero) & (near == one);
        slope_v = Vec<T>::blendv(zero, Vec<T>(slope_height) * sech2, unsaturated);
        slope_v = Vec<T>::blendv(slope_v, zero, clear_winner);
      }
      const Vec<T> nll = Vec<T>::blendv(zero, gap + log_sum, valid > zero);  // -log p[r]
      (nll + penalty).store(loss + e0, n);
      log_sum.store(log_normalizer + e0, n);
      mx.store(row_max + e0, n);
      slope_v.store(slope + e0, n);
      (slope_v / S).store(beta_softmax_slope + e0, n);
    }
  });
}

template <typename T>
void backward_kernel(const T* x, const int64_t* target, const T* grad_loss, const T* log_normalizer,
                     const T* row_max, const T* slope, const T* beta_softmax_slope, int64_t M,
                     int64_t C, int64_t L, const PenaltyOptions& o, T* grad) {
  constexpr int64_t W = Vec<T>::size();
  const int64_t blocks_per_row = (L + W - 1) / W;
  at::parallel_for(0, M * blocks_per_row, kGrainBlocks, [&](int64_t begin, int64_t end) {
    const Vec<T> zero(T(0));
    const Vec<T> beta_v(o.beta), floor_v(o.exp_floor);
    for (int64_t block = begin; block < end; ++block) {
      const int64_t m = block / blocks_per_row, l0 = (block % blocks_per_row) * W;
      const int64_t n = std::min(W, L - l0), e0 = m * L + l0;
      const T* xb = x + m * C * L + l0;
      T* gb = grad + m * C * L + l0;
      T g_lanes[W], ref_lanes[W];
      for (int64_t i = 0; i < W; ++i) {
        const int64_t t = i < n ? target[e0 + i] : o.ignore_index;
        const bool valid = t != o.ignore_index;
        g_lanes[i] = valid ? grad_loss[e0 + i] : T(0);
        ref_lanes[i] = valid ? T(t) : T(-1);
      }
      const Vec<T> g = Vec<T>::loadu(g_lanes), ref = Vec<T>::loadu(ref_lanes);
      const Vec<T> log_sum = Vec<T>::loadu(log_normalizer + e0, n);
      const Vec<T> slope_v = Vec<T>::loadu(slope + e0, n);
      const Vec<T> penalty_coef = g * Vec<T>::loadu(beta_softmax_slope + e0, n);
      const Vec<T> at_reference = g + g * slope_v;  // cross-entropy's and the penalty's onehot
      const bool with_penalty = any_lane<T>(penalty_coef != zero);
      const Vec<T> mx = Vec<T>::loadu(row_max + e0, n);
      for (int64_t c = 0; c < C; ++c) {
        const Vec<T> z = Vec<T>::loadu(xb + c * L, n);
        Vec<T> out = ((z - mx) - log_sum).exp() * g;  // softmax, as accurate as z - max
        out = out - Vec<T>::blendv(zero, at_reference, ref == Vec<T>(T(c)));
        if (with_penalty) {
          const Vec<T> a = (z - mx) * beta_v;
          const Vec<T> inside = (a > floor_v) & (penalty_coef != zero);
          if (any_lane<T>(inside)) {
            out += Vec<T>::blendv(zero, at::vec::clamp_min(a, floor_v).exp() * penalty_coef,
                                  inside);
          }
        }
        out.store(gb + c * L, n);
      }
    }
  });
}

PenaltyOptions make_options(int64_t ignore_index, double beta, double scaling_factor,
                            double penalty_scale, double exp_floor, double saturation,
                            double sech_limit) {
  return {ignore_index, beta, scaling_factor, penalty_scale, exp_floor, saturation, sech_limit};
}

void check_layout(const at::Tensor& logits, const at::Tensor& target) {
  TORCH_CHECK(logits.dim() == 3 && logits.is_contiguous() && logits.device().is_cpu(),
              "fairloss native kernel: logits must be contiguous (M, C, L) on CPU");
  TORCH_CHECK(logits.scalar_type() == at::kFloat || logits.scalar_type() == at::kDouble,
              "fairloss native kernel: logits must be float32 or float64");
  TORCH_CHECK(target.dim() == 2 && target.is_contiguous() && target.scalar_type() == at::kLong &&
                  target.size(0) == logits.size(0) && target.size(1) == logits.size(2),
              "fairloss native kernel: target must be contiguous int64 (M, L)");
}

std::vector<at::Tensor> kdim_forward(const at::Tensor& logits, const at::Tensor& target,
                                     int64_t ignore_index, double beta, double scaling_factor,
                                     double penalty_scale, double exp_floor, double saturation,
                                     double sech_limit) {
  check_layout(logits, target);
  const int64_t M = logits.size(0), C = logits.size(1), L = logits.size(2);
  const auto options = make_options(ignore_index, beta, scaling_factor, penalty_scale, exp_floor,
                                    saturation, sech_limit);
  std::vector<at::Tensor> out;
  for (int i = 0; i < 5; ++i) out.push_back(at::empty({M, L}, logits.options()));
  std::atomic<int64_t> bad_target{std::numeric_limits<int64_t>::min()};
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "fairloss_kdim_forward", [&] {
    forward_kernel<scalar_t>(logits.data_ptr<scalar_t>(), target.data_ptr<int64_t>(), M, C, L,
                             options, out[0].data_ptr<scalar_t>(), out[1].data_ptr<scalar_t>(),
                             out[2].data_ptr<scalar_t>(), out[3].data_ptr<scalar_t>(),
                             out[4].data_ptr<scalar_t>(), &bad_target);
  });
  const int64_t bad = bad_target.load();
  TORCH_CHECK_INDEX(bad == std::numeric_limits<int64_t>::min(), "Target ", bad,
                    " is out of bounds: expected class indices in [0, ", C,
                    ") or ignore_index=", ignore_index);
  return out;
}

at::Tensor kdim_backward(const at::Tensor& logits, const at::Tensor& target,
                         const at::Tensor& grad_loss, const at::Tensor& log_normalizer,
                         const at::Tensor& row_max, const at::Tensor& slope,
                         const at::Tensor& beta_softmax_slope, int64_t ignore_index, double beta,
                         double exp_floor) {
  check_layout(logits, target);
  const int64_t M = logits.size(0), C = logits.size(1), L = logits.size(2);
  for (const at::Tensor* t : {&grad_loss, &log_normalizer, &row_max, &slope, &beta_softmax_slope}) {
    TORCH_CHECK(t->is_contiguous() && t->scalar_type() == logits.scalar_type() &&
                    t->size(0) == M && t->size(1) == L,
                "fairloss native kernel: per-element inputs must be contiguous (M, L) tensors "
                "of the logits' dtype");
  }
  const auto options = make_options(ignore_index, beta, 0.0, 0.0, exp_floor, 0.0, 0.0);
  at::Tensor grad = at::empty_like(logits);
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "fairloss_kdim_backward", [&] {
    backward_kernel<scalar_t>(logits.data_ptr<scalar_t>(), target.data_ptr<int64_t>(),
                              grad_loss.data_ptr<scalar_t>(), log_normalizer.data_ptr<scalar_t>(),
                              row_max.data_ptr<scalar_t>(), slope.data_ptr<scalar_t>(),
                              beta_softmax_slope.data_ptr<scalar_t>(), M, C, L, options,
                              grad.data_ptr<scalar_t>());
  });
  return grad;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.def("kdim_forward", &kdim_forward,
             "FairLoss per element of (M, C, L) logits, and the statistics backward needs");
  module.def("kdim_backward", &kdim_backward, "Gradient of FairLoss w.r.t. (M, C, L) logits");
}
