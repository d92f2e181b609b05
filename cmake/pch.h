// Precompiled once (target reel_pch) and reused by every library: ATen is the heaviest header we include.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>
