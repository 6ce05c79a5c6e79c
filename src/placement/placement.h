// Where each part of a model runs: which decoder layers and whether the output head live on the GPU.
// One small decision object so that the session, the CLI and `qleap info` agree.
#pragma once
#include <string>

namespace qleap {

struct Placement {
  int n_layers = 0;
  int n_gpu_layers = 0;        // the last n_gpu_layers layers run on the GPU
  bool output_on_gpu = false;  // final norm + output projection on the GPU
  std::string note;            // why the request was changed (e.g. no CUDA device), else empty
  int first_gpu_layer() const { return n_layers - n_gpu_layers; }
  bool any_gpu() const { return n_gpu_layers > 0; }
  std::string describe() const;
};

// requested: layers to offload like llama.cpp's -ngl; < 0 or >= n_layers means all of them, which
// also puts the output head on the GPU (its input is already there, and it is the largest single
// matrix of a decode step). The token embeddings stay on the CPU: a lookup reads one row per token.
// n_devices == 0 turns any request into CPU only, with a note.
Placement plan_placement(int n_layers, int requested, int n_devices);

}  // namespace qleap
