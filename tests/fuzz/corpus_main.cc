// Replays fuzz inputs through LLVMFuzzerTestOneInput without libFuzzer, so that a fuzz
// target's seed corpus runs as an ordinary test with any compiler (as Envoy's test/fuzz/main.cc
// does). Arguments are files or directories (every regular file in it, in name order).
// A failing input aborts the process; its name has been printed to stderr just before.
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <system_error>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace {

const char* current_input = nullptr;

// Names the input that crashed, then lets the signal do what it would have done.
void OnFatalSignal(int sig) {
  if (current_input != nullptr) {
    const char prefix[] = "corpus: crashed on input ";
    (void)!write(STDERR_FILENO, prefix, sizeof(prefix) - 1);
    (void)!write(STDERR_FILENO, current_input, std::strlen(current_input));
    (void)!write(STDERR_FILENO, "\n", 1);
  }
  std::signal(sig, SIG_DFL);
  std::raise(sig);
}

bool ReadFile(const std::filesystem::path& path, std::vector<uint8_t>* out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  out->assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  return !in.bad();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s <corpus dir or file>...\n", argv[0]);
    return 2;
  }
  std::vector<std::filesystem::path> inputs;
  for (int i = 1; i < argc; ++i) {
    const std::filesystem::path arg(argv[i]);
    std::error_code ec;
    if (std::filesystem::is_directory(arg, ec)) {
      std::vector<std::filesystem::path> files;
      for (const auto& entry : std::filesystem::directory_iterator(arg, ec)) {
        if (entry.is_regular_file()) files.push_back(entry.path());
      }
      if (ec) {
        std::fprintf(stderr, "corpus: cannot list %s: %s\n", argv[i], ec.message().c_str());
        return 1;
      }
      std::sort(files.begin(), files.end());
      inputs.insert(inputs.end(), files.begin(), files.end());
    } else if (std::filesystem::is_regular_file(arg, ec)) {
      inputs.push_back(arg);
    } else {
      std::fprintf(stderr, "corpus: no such file or directory: %s\n", argv[i]);
      return 1;
    }
  }
  // An empty corpus would pass without testing anything.
  if (inputs.empty()) {
    std::fprintf(stderr, "corpus: no inputs\n");
    return 1;
  }

  for (int sig : {SIGABRT, SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGTRAP}) {
    std::signal(sig, OnFatalSignal);
  }
  int passed = 0;
  int failed = 0;
  std::vector<uint8_t> data;
  for (const auto& path : inputs) {
    const std::string name = path.string();
    if (!ReadFile(path, &data)) {
      std::fprintf(stderr, "corpus: cannot read %s\n", name.c_str());
      ++failed;
      continue;
    }
    current_input = name.c_str();
    // A copy of exactly the input's size, so that an overread is past the allocation.
    const std::vector<uint8_t> input(data);
    LLVMFuzzerTestOneInput(input.data(), input.size());
    current_input = nullptr;
    ++passed;
  }
  std::printf("%d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}
