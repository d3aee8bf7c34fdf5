/* Status codes: the text of every ts_status_t, generated from TS_STATUS_MAP so
 * the enum and its strings cannot drift apart. */
#include "tessera/status.h"

static const char *const status_text[TS_STATUS_COUNT] = {
#define TS_STATUS_TEXT(name, text) [TS_##name] = text,
    TS_STATUS_MAP(TS_STATUS_TEXT)
#undef TS_STATUS_TEXT
};

const char *ts_status_str(ts_status_t st)
{
    if ((unsigned)st >= TS_STATUS_COUNT) return "unknown status";
    return status_text[st];
}
