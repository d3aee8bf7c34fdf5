/* Fuzz target: the YAML configuration file (common/src/config.c over
 * libyaml). The input is the file; it is loaded the way every service
 * loads it (ts_config_load with --config), then freed. Errors are fine;
 * crashes, leaks and reads past the document are not. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "fuzz.h"
#include "tessera/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int fd = -1;
    if (fd < 0) {
        fd = memfd_create("tessera-fuzz-config", 0);
        if (fd < 0) abort();
    }
    if (ftruncate(fd, 0) != 0 || pwrite(fd, data, size, 0) != (ssize_t)size) abort();
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    char *argv[] = {(char *)"fuzz", (char *)"--config", path, NULL};
    ts_config_t cfg;
    char err[512];
    (void)ts_config_load(&cfg, 3, argv, NULL, NULL, err, sizeof err);
    ts_config_free(&cfg);
    return 0;
}
