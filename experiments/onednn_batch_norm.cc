// A measurement prototype for experiments/onednn_batch_norm.py, not part of jresnet: oneDNN's batch
// normalisation in training mode (forward with batch statistics, backward), NHWC fp32, optionally fused with
// the ReLU after it (fuse_norm_relu: the backward reads the ReLU mask from a workspace). oneDNN 3.2 rejects
// fuse_norm_add_relu for these shapes on CPU ("could not create a primitive descriptor").
#include <map>
#include <memory>
#include <mutex>
#include <tuple>
#include <unordered_map>
#include "dnnl.hpp"
#include "xla/ffi/api/ffi.h"
namespace ffi = xla::ffi;
using dnnl::memory;
namespace {
dnnl::engine& Engine() { static dnnl::engine e(dnnl::engine::kind::cpu, 0); return e; }
struct Plan {
  dnnl::batch_normalization_forward::primitive_desc fpd;
  dnnl::batch_normalization_forward fwd;
  dnnl::batch_normalization_backward::primitive_desc bpd;
  dnnl::batch_normalization_backward bwd;
};
std::mutex mu;
const Plan& GetPlan(int64_t n, int64_t h, int64_t w, int64_t c, float eps, bool relu) {
  static std::map<std::tuple<int64_t, int64_t, int64_t, int64_t, float, bool>, std::unique_ptr<Plan>> cache;
  auto key = std::make_tuple(n, h, w, c, eps, relu);
  auto it = cache.find(key);
  if (it != cache.end()) return *it->second;
  memory::desc md({n, c, h, w}, memory::data_type::f32, memory::format_tag::nhwc);
  auto flags = dnnl::normalization_flags::use_scale | dnnl::normalization_flags::use_shift;
  if (relu) flags = flags | dnnl::normalization_flags::fuse_norm_relu;
  auto fpd = dnnl::batch_normalization_forward::primitive_desc(Engine(), dnnl::prop_kind::forward_training, md, md,
                                                               eps, flags);
  auto bpd = dnnl::batch_normalization_backward::primitive_desc(Engine(), dnnl::prop_kind::backward, md, md, md, eps,
                                                                flags, fpd);
  auto p = std::make_unique<Plan>(Plan{fpd, dnnl::batch_normalization_forward(fpd), bpd,
                                       dnnl::batch_normalization_backward(bpd)});
  return *cache.emplace(key, std::move(p)).first->second;
}
memory Vec(int64_t c, void* p) { return memory(memory::desc({c}, memory::data_type::f32, memory::format_tag::x), Engine(), p); }

ffi::Error Fwd(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> scale, ffi::Buffer<ffi::F32> shift,
               ffi::ResultBuffer<ffi::F32> y, ffi::ResultBuffer<ffi::F32> mean, ffi::ResultBuffer<ffi::F32> var,
               ffi::ResultBuffer<ffi::U8> ws, float eps, bool relu) {
  auto d = x.dimensions();
  std::lock_guard<std::mutex> lock(mu);
  const Plan& p = GetPlan(d[0], d[1], d[2], d[3], eps, relu);
  memory xm(p.fpd.src_desc(), Engine(), x.typed_data()), ym(p.fpd.dst_desc(), Engine(), y->typed_data());
  dnnl::stream s(Engine());
  std::unordered_map<int, memory> args{{DNNL_ARG_SRC, xm}, {DNNL_ARG_DST, ym},
      {DNNL_ARG_SCALE, Vec(d[3], scale.typed_data())}, {DNNL_ARG_SHIFT, Vec(d[3], shift.typed_data())},
      {DNNL_ARG_MEAN, Vec(d[3], mean->typed_data())}, {DNNL_ARG_VARIANCE, Vec(d[3], var->typed_data())}};
  if (relu) args[DNNL_ARG_WORKSPACE] = memory(p.fpd.workspace_desc(), Engine(), ws->typed_data());
  p.fwd.execute(s, args);
  s.wait();
  return ffi::Error::Success();
}
ffi::Error Bwd(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> mean,
               ffi::Buffer<ffi::F32> var, ffi::Buffer<ffi::F32> scale, ffi::Buffer<ffi::U8> ws,
               ffi::ResultBuffer<ffi::F32> dx, ffi::ResultBuffer<ffi::F32> dscale, ffi::ResultBuffer<ffi::F32> dshift,
               float eps, bool relu) {
  auto d = x.dimensions();
  std::lock_guard<std::mutex> lock(mu);
  const Plan& p = GetPlan(d[0], d[1], d[2], d[3], eps, relu);
  dnnl::stream s(Engine());
  std::unordered_map<int, memory> args{{DNNL_ARG_SRC, memory(p.bpd.src_desc(), Engine(), x.typed_data())},
      {DNNL_ARG_DIFF_DST, memory(p.bpd.diff_dst_desc(), Engine(), dy.typed_data())},
      {DNNL_ARG_MEAN, Vec(d[3], mean.typed_data())}, {DNNL_ARG_VARIANCE, Vec(d[3], var.typed_data())},
      {DNNL_ARG_SCALE, Vec(d[3], scale.typed_data())},
      {DNNL_ARG_DIFF_SRC, memory(p.bpd.diff_src_desc(), Engine(), dx->typed_data())},
      {DNNL_ARG_DIFF_SCALE, Vec(d[3], dscale->typed_data())}, {DNNL_ARG_DIFF_SHIFT, Vec(d[3], dshift->typed_data())}};
  if (relu) args[DNNL_ARG_WORKSPACE] = memory(p.fpd.workspace_desc(), Engine(), ws.typed_data());
  p.bwd.execute(s, args);
  s.wait();
  return ffi::Error::Success();
}

}  // namespace

extern "C" size_t ProtoBnWorkspaceBytes(int64_t n, int64_t h, int64_t w, int64_t c, float eps) {
  std::lock_guard<std::mutex> lock(mu);
  return GetPlan(n, h, w, c, eps, true).fpd.workspace_desc().get_size();
}
XLA_FFI_DEFINE_HANDLER_SYMBOL(ProtoBnFwd, Fwd, ffi::Ffi::Bind().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>()
    .Arg<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::F32>>()
    .Ret<ffi::Buffer<ffi::U8>>().Attr<float>("eps").Attr<bool>("relu"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(ProtoBnBwd, Bwd, ffi::Ffi::Bind().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>()
    .Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::U8>>()
    .Ret<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::F32>>()
    .Attr<float>("eps").Attr<bool>("relu"));
