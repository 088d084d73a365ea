# cmake/aarch64-linux-gnu.cmake — cross-compiling tapegrad for 64-bit ARM with Debian's
# g++-aarch64-linux-gnu (scripts/aarch64.sh uses it; see there). The header-only
# libraries (xtensor, xsimd, nlohmann-json, CLI11, doctest) are the host's, which is right
# for headers; the compiled ones (PCRE2, utf8proc, libgomp) are the arm64 packages.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu /usr/lib/aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE BOTH)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE BOTH)
# pkg-config (PCRE2, utf8proc): the arm64 .pc files only.
set(ENV{PKG_CONFIG_LIBDIR} /usr/lib/aarch64-linux-gnu/pkgconfig:/usr/share/pkgconfig)
# Tests and doctest's test discovery run the ARM binaries under qemu-user, on the arm64
# multiarch loader and libraries (guest root /; Note [One glibc under qemu] in
# scripts/aarch64.sh: the cross sysroot's loader with the multiarch libc hangs threads).
set(CMAKE_CROSSCOMPILING_EMULATOR qemu-aarch64 -L /)
# xsimd and xtensor are header-only, but Debian ships their CMake configs under the host's
# multiarch directory (/usr/lib/x86_64-linux-gnu/cmake), which the ARM search does not look in.
foreach(pkg xsimd xtensor xtl)
  foreach(dir /usr/lib/aarch64-linux-gnu/cmake/${pkg} /usr/lib/x86_64-linux-gnu/cmake/${pkg} /usr/share/cmake/${pkg})
    if(NOT ${pkg}_DIR AND EXISTS ${dir}/${pkg}Config.cmake)
      set(${pkg}_DIR ${dir} CACHE PATH "${pkg}'s CMake config (header-only)" FORCE)
    endif()
  endforeach()
endforeach()
