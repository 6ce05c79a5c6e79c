// `qleap convert`: Hugging Face safetensors directory -> GGUF, or GGUF -> GGUF in another type.
#include "gguf/convert.h"

#include <fmt/format.h>

#include <filesystem>
#include <iostream>

#include "cli/common.h"
#include "core/error.h"
#include "core/timer.h"

namespace qleap::cli {
namespace {

struct ConvertCli {
  std::string input, output, type = "F16";
};

void convert_command(const ConvertCli& o) {
  const auto type = type_from_name(o.type);
  if (!type) throw InvalidArgument(fmt::format("unknown tensor type '{}'", o.type));
  Stopwatch sw;
  int last_pct = -1;
  auto progress = [&](const std::string& msg, double frac) {
    const int pct = int(frac * 100);
    if (pct != last_pct) {
      std::cerr << fmt::format("\r[{:3d}%] {:<60.60}", pct, msg) << std::flush;
      last_pct = pct;
    }
  };
  namespace fs = std::filesystem;
  if (fs::is_directory(o.input)) {
    ConvertOptions co;
    co.out_type = *type;
    co.progress = progress;
    convert_hf_to_gguf(o.input, o.output, co);
  } else if (fs::is_regular_file(o.input)) {
    requantize_gguf(o.input, o.output, *type, progress);
  } else {
    throw InvalidArgument(
        fmt::format("'{}' is neither a Hugging Face model directory nor a GGUF file", o.input));
  }
  std::cerr << fmt::format("\nwrote {} ({}) in {:.1f} s\n", o.output,
                           human_bytes(double(fs::file_size(o.output))), sw.elapsed());
}

}  // namespace

void register_convert(CLI::App& app) {
  auto opt = std::make_shared<ConvertCli>();
  auto* cmd = app.add_subcommand(
      "convert",
      "Convert a Hugging Face model directory (safetensors + config.json) to GGUF, or requantize a GGUF");
  cmd->add_option("input", opt->input, "HF model directory or .gguf file")->required();
  cmd->add_option("output", opt->output, "output .gguf path")->required();
  cmd->add_option(
         "--type", opt->type,
         "weight type: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL, Q4_K, Q5_K, Q6_K, IQ4_XS, "
         "TQ1_0, TQ2_0, MXFP4, NVFP4")
      ->capture_default_str();
  cmd->callback([opt] { convert_command(*opt); });
}

}  // namespace qleap::cli
