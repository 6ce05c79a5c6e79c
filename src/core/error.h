// Typed errors raised at the boundaries (files, requests, arguments). Callers turn them into clear
// messages or HTTP statuses; nothing in the engine aborts on bad input.
#pragma once
#include <stdexcept>
#include <string>

namespace qleap {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};
// A file is truncated, corrupt or not in the format we expect.
struct FormatError : Error {
  using Error::Error;
};
// The operating system refused (open, mmap, read, write).
struct IoError : Error {
  using Error::Error;
};
// The caller asked for something invalid (bad flag value, unknown model, oversized prompt).
struct InvalidArgument : Error {
  using Error::Error;
};
// Valid input that this build cannot handle yet (unknown architecture, tensor type).
struct Unsupported : Error {
  using Error::Error;
};

}  // namespace qleap
