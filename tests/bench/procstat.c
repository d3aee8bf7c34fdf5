/* Thread counts and CPU time from /proc/<pid>/task and /proc/<pid>/stat. */
#include "procstat.h"

#include <dirent.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int ts_proc_threads(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
    DIR *d = opendir(path);
    if (d == NULL) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.') n++;
    closedir(d);
    return n;
}

bool ts_proc_cpu_us(pid_t pid, uint64_t *out)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (f == NULL) return false;
    size_t len = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[len] = '\0';
    /* the command name (field 2) may hold spaces: fields count from the last ')' */
    const char *p = strrchr(buf, ')');
    if (p == NULL) return false;
    unsigned long long utime = 0, stime = 0;
    /* after ")": state(3) ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime(14) stime(15)
     */
    if (sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &utime, &stime) != 2)
        return false;
    long hz = sysconf(_SC_CLK_TCK);
    if (hz <= 0) hz = 100;
    *out = (uint64_t)(utime + stime) * 1000000ULL / (uint64_t)hz;
    return true;
}
