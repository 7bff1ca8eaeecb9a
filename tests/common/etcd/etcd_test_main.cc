// main() for test binaries built on tests/common/etcd/etcd_cluster.h: GoogleTest's, except that
// a run in which every test skipped (no etcd installed) exits 77, which CTest reports as
// skipped rather than passed.
#include "gtest/gtest.h"

int main(int argc, char** argv) {
  testing::InitGoogleTest(&argc, argv);
  int rc = RUN_ALL_TESTS();
  const testing::UnitTest& unit = *testing::UnitTest::GetInstance();
  if (rc == 0 && unit.test_to_run_count() > 0 &&
      unit.skipped_test_count() == unit.test_to_run_count()) {
    return 77;
  }
  return rc;
}
