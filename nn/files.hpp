// nn/files.hpp — reading and writing the files of a training run safely.
//
// What it is for: the small file operations every program of the project needs and gets
// wrong when each writes its own:
//   - write_file_atomic: a temporary in the same folder, fsync, rename, so a crash leaves
//     the old or the new version, never a torn one;
//   - read_file / read_json: the whole file, refusing anything that is not a regular file
//     (a FIFO or a device would block or never end) with a message naming the path;
//   - open_regular / check_regular_file: the same check for readers that open files
//     themselves (safetensors, tokens, the corpus);
//   - same_file: do two paths name the same file (st_dev and st_ino), so an output can
//     refuse to overwrite one of its inputs.
//
// What it is not: a general filesystem library (std::filesystem is used for that), or a
// format (nn/safetensors.hpp, nn/config.hpp, nn/metrics.hpp, nn/checkpoint.hpp).
#pragma once

#include <string>

#include <nlohmann/json.hpp>

namespace tg::io {

// `dir/name`.
std::string join(const std::string& dir, const std::string& name);

// Atomic: writes `path.tmp.<pid>`, fsyncs it, renames it over `path`. On failure the
// temporary is removed, `path` is untouched, and std::runtime_error names the path.
void write_file_atomic(const std::string& path, const std::string& bytes);
// fsync of a folder, so the renames inside it survive a power cut; errors name the folder.
void fsync_dir(const std::string& dir);

// Opens `path` read-only without blocking (O_NONBLOCK, then cleared) and checks it is a
// regular file; returns the descriptor (the caller closes it). std::runtime_error names
// `what` (e.g. "--weights") and the path when it is missing, a folder, a FIFO, a device...
int open_regular(const std::string& path, const std::string& what = "");
// open_regular, then close: the check alone.
void check_regular_file(const std::string& path, const std::string& what = "");
// The whole file; std::runtime_error naming the path if it cannot be read or is not a
// regular file.
std::string read_file(const std::string& path);
// A JSON file, parsed; errors name the path.
nlohmann::json read_json(const std::string& path);

// True when both paths exist and name the same file (same device and inode: hard links
// and symlinks count as the same file).
bool same_file(const std::string& a, const std::string& b);

}  // namespace tg::io
