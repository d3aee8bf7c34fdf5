/* What /proc says about a process the bench started: how many threads it
 * runs and how much CPU it used. Linux only. */
#ifndef TS_PROCSTAT_H
#define TS_PROCSTAT_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

/* Threads of pid (entries of /proc/<pid>/task), or -1 if it cannot be read. */
int ts_proc_threads(pid_t pid);
/* User + system CPU time of pid so far, in microseconds; false if it cannot
 * be read. */
bool ts_proc_cpu_us(pid_t pid, uint64_t *out);

#endif
