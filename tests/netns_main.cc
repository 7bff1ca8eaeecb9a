// main() for tests that touch the kernel's network stack: the whole binary first moves into a
// private network namespace (and a private mount namespace, so /sys shows that namespace), so
// devices, routes and sockets it makes cannot touch the host and vanish with the process.
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>

#include "gtest/gtest.h"

int main(int argc, char** argv) {
  testing::InitGoogleTest(&argc, argv);
  if (unshare(CLONE_NEWNET | CLONE_NEWNS) != 0) {
    fprintf(stderr, "skipping: cannot create a network namespace (%s); run as root\n",
            strerror(errno));
    return 77;
  }
  // Private mounts, then a /sys of this namespace (so /sys/class/net lists our links).
  if (mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) == 0) {
    umount2("/sys", MNT_DETACH);
    mount("sysfs", "/sys", "sysfs", 0, nullptr);
  }
  return RUN_ALL_TESTS();
}
