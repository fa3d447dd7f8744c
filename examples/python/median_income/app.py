"""Median weekly income in Python, for sample-and-aggregate mode (`blocks = N`): the same
analysis as examples/median-income (Rust). Veil clamps each block's median to the manifest's
range, averages over blocks and adds noise scaled to range / blocks."""
import wit_world
import veil


def median_income(unit, out):
    income = unit.column("weekly_income")
    if income is None:
        veil.log("median_income needs the weekly_income column")
        return
    values = sorted(
        row[income] for row in unit.rows
        if isinstance(row[income], (int, float)) and row[income] == row[income]
    )
    if not values:
        return
    mid = len(values) // 2
    median = values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2
    out.emit([], [median])


class WitWorld(wit_world.WitWorld):
    def run_block(self, input: bytes) -> bytes:
        return veil.run(input, median_income)
