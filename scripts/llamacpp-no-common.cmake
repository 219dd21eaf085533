# Included by CMake at the end of llama.cpp's own project() call (CMAKE_PROJECT_llama.cpp_INCLUDE,
# set by scripts/setup-llamacpp.sh). llama-cpp-python's CMakeLists.txt forces LLAMA_BUILD_COMMON ON in
# the cache, so -DLLAMA_BUILD_COMMON=OFF cannot switch it off; the Python binding loads only libllama
# and libggml* (ctypes), never llama-common (chat parsers, arg parsing, cpp-httplib: most of the build).
# A normal variable in llama.cpp's directory scope shadows the cache entry: its option() keeps it
# (CMP0077) and `if (LLAMA_BUILD_COMMON)` skips common/, cpp-httplib and common's install rule.
set(LLAMA_BUILD_COMMON OFF)
