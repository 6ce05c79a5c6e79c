#include "placement/placement.h"

#include <fmt/format.h>

namespace qleap {

std::string Placement::describe() const {
  if (!any_gpu()) return fmt::format("CPU: all {} layers", n_layers);
  if (n_gpu_layers == n_layers) {
    return fmt::format("GPU: all {} layers{}", n_layers, output_on_gpu ? " + output head" : "");
  }
  return fmt::format("CPU: layers 0-{}, GPU: layers {}-{}{}", first_gpu_layer() - 1, first_gpu_layer(),
                     n_layers - 1, output_on_gpu ? " + output head" : "");
}

Placement plan_placement(int n_layers, int requested, int n_devices) {
  Placement p;
  p.n_layers = n_layers;
  if (requested == 0 || n_layers <= 0) return p;
  if (n_devices <= 0) {
    p.note =
        fmt::format("--gpu-layers {} ignored: no CUDA device (this build {} the CUDA backend)", requested,
#ifdef QLEAP_HAVE_CUDA
                    "has"
#else
                    "lacks"
#endif
        );
    return p;
  }
  p.n_gpu_layers = (requested < 0 || requested >= n_layers) ? n_layers : requested;
  p.output_on_gpu = p.n_gpu_layers == n_layers;
  return p;
}

}  // namespace qleap
