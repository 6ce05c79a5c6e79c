#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <cstring>
#include <exception>

#include "cli/common.h"
#include "core/error.h"
#include "core/version.h"

int main(int argc, char** argv) {
  CLI::App app{"qleap - QuantumLeap local LLM inference engine"};
  app.set_version_flag("--version",
                       fmt::format("qleap {} (commit {})", qleap::version(), qleap::git_commit()));
  app.require_subcommand(1);
  qleap::cli::register_run(app);
  qleap::cli::register_info(app);
  qleap::cli::register_convert(app);
  qleap::cli::register_bench(app);
  qleap::cli::register_perplexity(app);
  qleap::cli::register_serve(app);
  qleap::cli::register_models(app);
  qleap::cli::register_plan(app);
  qleap::cli::register_tune(app);
  qleap::cli::register_profile(app);
  qleap::cli::register_compare(app);
  qleap::cli::register_passkey(app);
  qleap::cli::register_completion(app);
  // llama.cpp spells the GPU layer count "-ngl"; CLI11 allows only one-letter short options.
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "-ngl") == 0) argv[i] = const_cast<char*>("--ngl");
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const qleap::Error& e) {
    fmt::print(stderr, "error: {}\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    fmt::print(stderr, "error: {}\n", e.what());
    return 2;
  }
  return 0;
}
