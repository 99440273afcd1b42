"""The human-readable report of ``caffeseg model evaluate``: pixel summary, the Sunnybrook
challenge's summary rows per phase, the per-patient LV function table and the EF agreement."""


def _num(value, fmt="%.1f"):
    return "-" if value is None else fmt % value


def _mean_std(stats, fmt="%.2f"):
    if not stats:
        return "-"
    return (fmt + " ± " + fmt) % (stats["mean"], stats["std"])


def evaluation_report(table):
    """Text of an evaluation table (jobs.evaluate.evaluate's)."""
    lines = ["snapshot %s, %s stage: %d records" % (table.get("snapshot"), table.get("stage"), table.get("count", 0))]
    dice = (table.get("summary") or {}).get("dice")
    if dice:
        lines.append("pixel Dice %.3f ± %.3f (min %.3f)" % (dice["mean"], dice["std"], dice["min"]))
    clinical = table.get("clinical") or {}
    rows = clinical.get("phase_summary") or []
    if rows:
        lines += ["", "Contours (Sunnybrook challenge: APD = mean distance of the automatic contour "
                      "to the expert's, good = APD < 5 mm)",
                  "%-6s %5s %-11s %-15s %-15s %-15s %-15s %s" % (
                      "phase", "n", "good", "APD mm (good)", "Dice (good)", "APD mm (all)", "Dice (all)",
                      "Hausdorff mm")]
        for r in rows:
            lines.append("%-6s %5d %-11s %-15s %-15s %-15s %-15s %s" % (
                r["phase"], r["count"], "%d (%.0f %%)" % (r["good_contours"], r["good_percent"]),
                _mean_std(r.get("apd_mm_good")), _mean_std(r.get("dice_good"), "%.3f"),
                _mean_std(r["apd_mm"]), _mean_std(r["dice"], "%.3f"), _mean_std(r["hausdorff_mm"])))
    patients = clinical.get("patients") or []
    if patients:
        lines += ["", "Patients (predicted / expert; volumes by summation of discs)",
                  "%-12s %-15s %-15s %-13s %-15s %s" % ("patient", "EDV ml", "ESV ml", "EF %", "mass g", "")]
        for p in patients:
            pr, ex = p["pred"], p["expert"]
            lines.append("%-12s %-15s %-15s %-13s %-15s %s" % (
                p["case"], "%s / %s" % (_num(pr["edv_ml"]), _num(ex["edv_ml"])),
                "%s / %s" % (_num(pr["esv_ml"]), _num(ex["esv_ml"])),
                "%s / %s" % (_num(pr["ef_percent"]), _num(ex["ef_percent"])),
                "%s / %s" % (_num(pr["myocardial_mass_g"]), _num(ex["myocardial_mass_g"])),
                "partial" if p.get("partial") else ""))
    ef = (clinical.get("agreement") or {}).get("ef_percent")
    if ef:
        lines.append("EF agreement over %d patients: bias %.1f %%, limits %.1f to %.1f %%%s" % (
            ef["n"], ef["bias"], ef["lower"], ef["upper"],
            ", r = %.3f" % ef["r"] if ef.get("r") is not None else ""))
    for w in clinical.get("warnings") or []:
        lines.append("warning: %s" % w)
    return "\n".join(lines)
