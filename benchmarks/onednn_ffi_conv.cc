// An NHWC (input, output) / HWIO (kernel) float32 convolution run by oneDNN, as an
// XLA FFI handler for JAX on a CPU. Built and measured by benchmarks/onednn_ffi.py;
// the library itself ships no compiled code.
#include <cstdint>
#include <map>
#include <mutex>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using tag = memory::format_tag;

namespace {

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

struct Plan {
  dnnl::convolution_forward::primitive_desc desc;
  dnnl::convolution_forward primitive;
  bool reorder;  // oneDNN wants the kernel in its own blocked layout
};

// One plan per shape; XLA may run independent convolutions at the same time, and
// oneDNN's OpenMP team already uses every core, so calls run one after the other.
std::mutex mutex;
std::map<std::vector<int64_t>, Plan> plans;

ffi::Error Convolve(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> kernel,
                    ffi::ResultBuffer<ffi::F32> y, int64_t sh, int64_t sw, int64_t top,
                    int64_t bottom, int64_t left, int64_t right) {
  std::lock_guard<std::mutex> lock(mutex);
  auto xd = x.dimensions(), kd = kernel.dimensions(), yd = y->dimensions();
  if (xd.size() != 4 || kd.size() != 4 || yd.size() != 4 || kd[2] != xd[3]) {
    return ffi::Error::InvalidArgument("expected NHWC input, HWIO kernel, NHWC output");
  }
  const int64_t n = xd[0], h = xd[1], w = xd[2], c = xd[3];
  const int64_t kh = kd[0], kw = kd[1], o = kd[3], oh = yd[1], ow = yd[2];
  memory::desc src({n, c, h, w}, memory::data_type::f32, tag::nhwc);
  memory::desc weights({o, c, kh, kw}, memory::data_type::f32, tag::hwio);
  memory::desc dst({n, o, oh, ow}, memory::data_type::f32, tag::nhwc);
  std::vector<int64_t> key{n, h, w, c, kh, kw, o, sh, sw, top, bottom, left, right};
  auto found = plans.find(key);
  if (found == plans.end()) {
    memory::desc any({o, c, kh, kw}, memory::data_type::f32, tag::any);
    dnnl::convolution_forward::primitive_desc desc(
        Engine(), dnnl::prop_kind::forward_inference, dnnl::algorithm::convolution_direct,
        src, any, dst, {sh, sw}, {top, left}, {bottom, right});
    found = plans.emplace(key, Plan{desc, dnnl::convolution_forward(desc),
                                    desc.weights_desc() != weights}).first;
  }
  Plan& plan = found->second;
  dnnl::stream stream(Engine());
  memory src_mem(src, Engine(), x.typed_data());
  memory dst_mem(dst, Engine(), y->typed_data());
  memory kernel_mem(weights, Engine(), kernel.typed_data());
  if (plan.reorder) {  // every call: the kernel is an argument, it may change
    memory blocked(plan.desc.weights_desc(), Engine());
    dnnl::reorder(kernel_mem, blocked).execute(stream, kernel_mem, blocked);
    kernel_mem = blocked;
  }
  plan.primitive.execute(stream, {{DNNL_ARG_SRC, src_mem}, {DNNL_ARG_WEIGHTS, kernel_mem},
                                  {DNNL_ARG_DST, dst_mem}});
  stream.wait();
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConv, Convolve,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("sh")
                                  .Attr<int64_t>("sw")
                                  .Attr<int64_t>("top")
                                  .Attr<int64_t>("bottom")
                                  .Attr<int64_t>("left")
                                  .Attr<int64_t>("right"));
