// 2-D convolutions on CPU through oneDNN, exposed to XLA as typed FFI custom calls.
//
// Why: XLA CPU's convolutions (Eigen) are what keeps a jitted ResNet train step behind PyTorch on CPU,
// and PyTorch's CPU convolutions are oneDNN's. These three handlers are the forward pass and the two
// gradients of one convolution, in the layout jresnet computes in:
//   activations (B, H, W, C) ("nhwc"), kernel (C_out, C_in / groups, K_h, K_w) ("oihw" / "goihw").
// The kernel keeps its own layout at the boundary; oneDNN picks a blocked copy inside, built per call
// (kernels are small next to activations).
//
// Each distinct shape builds its primitives once; they are cached for the life of the process.
// Execution is thread-safe: scratch memory is per call (user scratchpad mode), primitives are immutable.

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "onednn_common.h"

namespace ffi = xla::ffi;
using jresnet_native::Engine;
using jresnet_native::Guarded;
using jresnet_native::SharedBuffer;
using jresnet_native::UserScratchpad;

namespace {

using dims = dnnl::memory::dims;
using tag = dnnl::memory::format_tag;
constexpr auto f32 = dnnl::memory::data_type::f32;

// The geometry of one convolution, in the terms of the jresnet layer that calls it.
struct Geometry {
  int64_t batch, in_h, in_w, in_c, out_h, out_w, out_c, k_h, k_w;
  int64_t stride_h, stride_w, pad_top, pad_bottom, pad_left, pad_right, dil_h, dil_w, groups;

  std::vector<int64_t> Key(int kind) const {
    return {kind,     batch,    in_h,       in_w,     in_c,      out_h, out_w, out_c,  k_h, k_w,
            stride_h, stride_w, pad_top, pad_bottom, pad_left, pad_right, dil_h, dil_w, groups};
  }
  dims Src() const { return {batch, in_c, in_h, in_w}; }  // oneDNN names dims NCHW; the tag gives the layout
  dims Dst() const { return {batch, out_c, out_h, out_w}; }
  dims Weights() const {
    if (groups == 1) return {out_c, in_c, k_h, k_w};
    return {groups, out_c / groups, in_c / groups, k_h, k_w};
  }
  tag WeightsTag() const { return groups == 1 ? tag::oihw : tag::goihw; }
  dims Strides() const { return {stride_h, stride_w}; }
  dims Dilation() const { return {dil_h - 1, dil_w - 1}; }  // oneDNN counts the gaps: 0 is dense
  dims PadLo() const { return {pad_top, pad_left}; }
  dims PadHi() const { return {pad_bottom, pad_right}; }
};

dnnl::memory::desc Activations(const dims& d) { return dnnl::memory::desc(d, f32, tag::nhwc); }
dnnl::memory::desc AnyWeights(const Geometry& g) { return dnnl::memory::desc(g.Weights(), f32, tag::any); }
dnnl::memory::desc UserWeights(const Geometry& g) { return dnnl::memory::desc(g.Weights(), f32, g.WeightsTag()); }

dnnl::convolution_forward::primitive_desc ForwardDesc(const Geometry& g) {
  return dnnl::convolution_forward::primitive_desc(
      Engine(), dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, Activations(g.Src()),
      AnyWeights(g), Activations(g.Dst()), g.Strides(), g.Dilation(), g.PadLo(), g.PadHi(), UserScratchpad());
}

// One cached plan per (direction, geometry): the convolution and the kernel reorder around it.
struct Plan {
  dnnl::primitive conv;
  dnnl::memory::desc weights;  // the kernel layout the convolution wants
  bool reorder = false;        // whether that differs from the caller's (g)oihw
  dnnl::reorder weights_reorder;
  dnnl::memory::desc scratchpad;
  std::string impl;
};

enum Direction { kForward = 0, kBackwardData = 1, kBackwardWeights = 2 };

std::unique_ptr<Plan> MakePlan(Direction direction, const Geometry& g) {
  auto plan = std::make_unique<Plan>();
  auto fwd = ForwardDesc(g);
  if (direction == kForward) {
    plan->conv = dnnl::convolution_forward(fwd);
    plan->weights = fwd.weights_desc();
    plan->scratchpad = fwd.scratchpad_desc();
    plan->impl = fwd.impl_info_str();
  } else if (direction == kBackwardData) {
    dnnl::convolution_backward_data::primitive_desc pd(
        Engine(), dnnl::algorithm::convolution_direct, Activations(g.Src()), AnyWeights(g), Activations(g.Dst()),
        g.Strides(), g.Dilation(), g.PadLo(), g.PadHi(), fwd, UserScratchpad());
    plan->conv = dnnl::convolution_backward_data(pd);
    plan->weights = pd.weights_desc();
    plan->scratchpad = pd.scratchpad_desc();
    plan->impl = pd.impl_info_str();
  } else {
    dnnl::convolution_backward_weights::primitive_desc pd(
        Engine(), dnnl::algorithm::convolution_direct, Activations(g.Src()), AnyWeights(g), Activations(g.Dst()),
        g.Strides(), g.Dilation(), g.PadLo(), g.PadHi(), fwd, UserScratchpad());
    plan->conv = dnnl::convolution_backward_weights(pd);
    plan->weights = pd.diff_weights_desc();
    plan->scratchpad = pd.scratchpad_desc();
    plan->impl = pd.impl_info_str();
  }
  plan->reorder = plan->weights != UserWeights(g);
  if (plan->reorder) {
    // Forward and input gradient read the kernel (user -> blocked); the kernel gradient writes it back.
    auto from = direction == kBackwardWeights ? plan->weights : UserWeights(g);
    auto to = direction == kBackwardWeights ? UserWeights(g) : plan->weights;
    plan->weights_reorder = dnnl::reorder(dnnl::reorder::primitive_desc(Engine(), from, Engine(), to));
  }
  return plan;
}

const Plan& GetPlan(Direction direction, const Geometry& g) {
  static std::mutex mutex;
  static std::map<std::vector<int64_t>, std::unique_ptr<Plan>> plans;
  std::lock_guard<std::mutex> lock(mutex);
  auto& slot = plans[g.Key(direction)];
  if (!slot) slot = MakePlan(direction, g);
  return *slot;
}

// Why a geometry cannot be computed ("" when it can): checked before any division by groups.
std::string Invalid(const Geometry& g) {
  for (int64_t v : {g.batch, g.in_h, g.in_w, g.in_c, g.out_h, g.out_w, g.out_c, g.k_h, g.k_w, g.stride_h,
                    g.stride_w, g.dil_h, g.dil_w, g.groups})
    if (v < 1) return "every size, stride, dilation and groups must be >= 1";
  for (int64_t v : {g.pad_top, g.pad_bottom, g.pad_left, g.pad_right})
    if (v < 0) return "padding must be >= 0";
  if (g.in_c % g.groups != 0 || g.out_c % g.groups != 0) return "channels must be divisible by groups";
  return "";
}

ffi::Error Geometry4(ffi::Span<const int64_t> v, const char* name, int64_t want) {
  if (static_cast<int64_t>(v.size()) != want)
    return ffi::Error::InvalidArgument(std::string(name) + ": expected " + std::to_string(want) + " values");
  return ffi::Error::Success();
}

// Builds the geometry from activations (B, H, W, C) on both sides and the kernel (O, I/G, K, K).
ffi::ErrorOr<Geometry> MakeGeometry(ffi::Span<const int64_t> src, ffi::Span<const int64_t> dst,
                                    ffi::Span<const int64_t> kernel, ffi::Span<const int64_t> strides,
                                    ffi::Span<const int64_t> padding, ffi::Span<const int64_t> dilation,
                                    int64_t groups) {
  for (auto [v, name, n] : {std::tuple{src, "input", 4}, std::tuple{dst, "output", 4},
                            std::tuple{kernel, "kernel", 4}, std::tuple{strides, "strides", 2},
                            std::tuple{padding, "padding", 4}, std::tuple{dilation, "dilation", 2}}) {
    if (auto e = Geometry4(v, name, n); !e.success()) return ffi::Unexpected(e);
  }
  Geometry g{src[0],     src[1],     src[2],     src[3],     dst[1],      dst[2],     dst[3],      kernel[2],
             kernel[3],  strides[0], strides[1], padding[0], padding[1], padding[2], padding[3], dilation[0],
             dilation[1], groups};
  if (src[0] != dst[0]) return ffi::Unexpected(ffi::Error::InvalidArgument("input and output batch differ"));
  if (std::string why = Invalid(g); !why.empty()) return ffi::Unexpected(ffi::Error::InvalidArgument(why));
  if (kernel[0] != g.out_c || kernel[1] * groups != g.in_c)
    return ffi::Unexpected(ffi::Error::InvalidArgument("kernel (O, I/G, K, K) does not match the activations"));
  return g;
}

void Execute(const Plan& plan, std::unordered_map<int, dnnl::memory> args) {
  jresnet_native::ExecuteWithScratchpad(plan.conv, plan.scratchpad, std::move(args));
}

// The caller's kernel in the layout `plan` wants: the caller's own buffer, or a reordered copy.
dnnl::memory KernelIn(const Plan& plan, const Geometry& g, void* user) {
  dnnl::memory mem(UserWeights(g), Engine(), user);
  if (!plan.reorder) return mem;
  dnnl::memory blocked(plan.weights, Engine(), SharedBuffer(1, plan.weights.get_size()));
  dnnl::stream stream(Engine());
  plan.weights_reorder.execute(stream, mem, blocked);
  stream.wait();
  return blocked;
}

dnnl::memory Activation(const dims& d, void* data) { return dnnl::memory(Activations(d), Engine(), data); }

// The forward pass and the input gradient both read the kernel; the forward reads src and writes dst, the
// input gradient reads diff_dst and writes diff_src.
ffi::Error ReadingKernel(Direction direction, const Geometry& g, void* src, void* weights, void* dst) {
  return Guarded("convolution", [&] {
    const Plan& plan = GetPlan(direction, g);
    bool forward = direction == kForward;
    Execute(plan, {{forward ? DNNL_ARG_SRC : DNNL_ARG_DIFF_SRC, Activation(g.Src(), src)},
                   {DNNL_ARG_WEIGHTS, KernelIn(plan, g, weights)},
                   {forward ? DNNL_ARG_DST : DNNL_ARG_DIFF_DST, Activation(g.Dst(), dst)}});
  });
}

ffi::Error ForwardImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<ffi::F32> y,
                       ffi::Span<const int64_t> strides, ffi::Span<const int64_t> padding,
                       ffi::Span<const int64_t> dilation, int64_t groups) {
  auto g = MakeGeometry(x.dimensions(), y->dimensions(), w.dimensions(), strides, padding, dilation, groups);
  if (g.has_error()) return g.error();
  return ReadingKernel(kForward, *g, x.typed_data(), w.typed_data(), y->typed_data());
}

ffi::Error BackwardDataImpl(ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<ffi::F32> dx,
                            ffi::Span<const int64_t> strides, ffi::Span<const int64_t> padding,
                            ffi::Span<const int64_t> dilation, int64_t groups) {
  auto g = MakeGeometry(dx->dimensions(), dy.dimensions(), w.dimensions(), strides, padding, dilation, groups);
  if (g.has_error()) return g.error();
  return ReadingKernel(kBackwardData, *g, dx->typed_data(), w.typed_data(), dy.typed_data());
}

ffi::Error BackwardWeightsImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy, ffi::ResultBuffer<ffi::F32> dw,
                               ffi::Span<const int64_t> strides, ffi::Span<const int64_t> padding,
                               ffi::Span<const int64_t> dilation, int64_t groups) {
  auto g = MakeGeometry(x.dimensions(), dy.dimensions(), dw->dimensions(), strides, padding, dilation, groups);
  if (g.has_error()) return g.error();
  return Guarded("convolution", [&] {
    const Plan& plan = GetPlan(kBackwardWeights, *g);
    dnnl::memory user(UserWeights(*g), Engine(), dw->typed_data());
    dnnl::memory out = plan.reorder ? dnnl::memory(plan.weights, Engine(), SharedBuffer(1, plan.weights.get_size()))
                                    : user;
    Execute(plan, {{DNNL_ARG_SRC, Activation(g->Src(), x.typed_data())},
                   {DNNL_ARG_DIFF_DST, Activation(g->Dst(), dy.typed_data())},
                   {DNNL_ARG_DIFF_WEIGHTS, out}});
    if (plan.reorder) {
      dnnl::stream stream(Engine());
      plan.weights_reorder.execute(stream, out, user);
      stream.wait();
    }
  });
}

// Every direction takes two f32 tensors, returns one, and reads the same four attributes.
auto Binding() {
  return ffi::Ffi::Bind()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Ret<ffi::Buffer<ffi::F32>>()
      .Attr<ffi::Span<const int64_t>>("strides")
      .Attr<ffi::Span<const int64_t>>("padding")
      .Attr<ffi::Span<const int64_t>>("dilation")
      .Attr<int64_t>("groups");
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(JresnetConvForward, ForwardImpl, Binding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(JresnetConvBackwardData, BackwardDataImpl, Binding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(JresnetConvBackwardWeights, BackwardWeightsImpl, Binding());

// For tests and benchmarks: which oneDNN implementation each direction picked ("brg:avx2", "ref:any", ...).
extern "C" int JresnetConvImpl(int direction, const int64_t* geometry, char* out, int out_len) {
  try {
    Geometry g{geometry[0],  geometry[1],  geometry[2],  geometry[3],  geometry[4],  geometry[5],
               geometry[6],  geometry[7],  geometry[8],  geometry[9],  geometry[10], geometry[11],
               geometry[12], geometry[13], geometry[14], geometry[15], geometry[16], geometry[17]};
    if (std::string why = Invalid(g); !why.empty()) {
      snprintf(out, out_len, "%s", why.c_str());
      return 1;
    }
    std::string impl = GetPlan(static_cast<Direction>(direction), g).impl;
    snprintf(out, out_len, "%s", impl.c_str());
    return 0;
  } catch (const std::exception& e) {  // dnnl::error derives from std::exception
    snprintf(out, out_len, "%s", e.what());
    return 1;
  }
}

// For profiling: nanoseconds spent inside oneDNN and the number of calls since the last reset.
extern "C" void JresnetConvBusy(int64_t* ns, int64_t* calls, int reset) {
  using jresnet_native::busy_calls, jresnet_native::busy_ns;
  *ns = reset ? busy_ns.exchange(0) : busy_ns.load();
  *calls = reset ? busy_calls.exchange(0) : busy_calls.load();
}
