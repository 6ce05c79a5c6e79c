// The release version and the git commit this binary was built from (generated at build time by
// cmake/version.cmake).
#pragma once

namespace qleap {

const char* version();     // "0.1.0"
const char* git_commit();  // short hash, "-dirty" when built with uncommitted changes, or "unknown"

}  // namespace qleap
