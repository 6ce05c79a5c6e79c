// Whole-file reads for the small inputs commands take (text to score, JSON profiles).
#pragma once
#include <string>

namespace qleap {

// The file's bytes. Throws IoError "cannot read '<path>'" when it cannot be opened.
std::string read_file(const std::string& path);

}  // namespace qleap
