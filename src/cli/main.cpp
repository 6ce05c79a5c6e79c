#include <CLI/CLI.hpp>
#include <cstdio>

int main(int argc, char** argv) {
  CLI::App app{"qleap: local LLM inference engine"};
  app.require_subcommand(0, 1);
  CLI11_PARSE(app, argc, argv);
  std::printf("qleap 0.1.0\n");
  return 0;
}
