/*
 * Mean weekly income by education level, in C: the same analysis as
 * examples/income-by-education (Rust), so the two can be compared output for output and in cost.
 * Each person contributes once, to the group of their education level, with the average of their
 * weekly income records.
 */
#include "../../crates/veil-guest/c/veil_guest.h"

static const char *level(int64_t years) {
    if (years <= 11) return "below high school";
    if (years == 12) return "high school";
    if (years <= 15) return "some college";
    if (years == 16) return "bachelor";
    return "graduate";
}

void veil_map(const veil_unit *unit, veil_emitter *out) {
    int educ = veil_column(unit, "educ");
    int income = veil_column(unit, "weekly_income");
    if (educ < 0 || income < 0) {
        veil_log("income_by_education.c needs columns educ and weekly_income");
        return;
    }
    int have_education = 0;
    int64_t education = 0;
    double total = 0;
    uint32_t n = 0;
    for (uint32_t r = 0; r < unit->rows; r++) {
        const veil_cell *row = &unit->cells[r * unit->columns];
        if (row[educ].tag == VEIL_INT) {
            education = row[educ].i;
            have_education = 1;
        }
        double w;
        if (veil_number(&row[income], &w)) {
            total += w;
            n++;
        }
    }
    if (have_education && n > 0) {
        const char *key[1] = {level(education)};
        double mean = total / n;
        veil_emit(out, key, 1, &mean, 1);
    }
}
