#include "backend/backend.h"

namespace qleap {

Backend::~Backend() = default;

}  // namespace qleap
