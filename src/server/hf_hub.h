// Plain HTTP(S) GETs to the Hugging Face Hub, shared by `pull` (model_pull.cpp) and the model
// search (hf_search.cpp). The Hub's address is configurable so that a mirror, or a stand-in server
// in the tests, can take its place: $QLEAP_HF_ENDPOINT (e.g. "http://127.0.0.1:8080"), else
// https://huggingface.co. $HF_TOKEN, when set, is sent as a bearer token.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/error.h"

namespace qleap::server::hf {

// "https://huggingface.co" or $QLEAP_HF_ENDPOINT, without a trailing '/'.
std::string endpoint();

// The Hub could not be reached at all (name resolution, refused connection, timeout, TLS): the
// message names the endpoint and says what to do.
struct Unreachable : IoError {
  using IoError::IoError;
};

struct Response {
  int status = 0;
  std::string body;
  std::string content_range;  // the Content-Range header of a ranged answer
};

// GET endpoint() + path (path starts with '/' and is already URL-encoded). Redirects are followed.
// Throws Unreachable; any HTTP status is returned to the caller.
Response get(const std::string& path, const std::vector<std::pair<std::string, std::string>>& headers = {},
             int read_timeout_s = 30);

// Bytes [begin, end) of endpoint() + path (a file under /<repo>/resolve/...), asked for with a Range
// header; a server that ignores Range is read only as far as `end`. Returns fewer bytes at the end
// of the file. Throws Unreachable, or IoError on an HTTP error status.
std::string get_range(const std::string& path, uint64_t begin, uint64_t end);

// Percent-encodes everything but unreserved characters (RFC 3986); keep_slash leaves '/' as is
// (repository ids and file paths inside a URL path).
std::string url_encode(std::string_view s, bool keep_slash = false);

}  // namespace qleap::server::hf
