import { render, screen, within } from "@testing-library/react";
import { expect, it } from "vitest";
import ProbabilityBars from "./ProbabilityBars.jsx";

const probabilities = [
  { code: "MI", name: "Myocardial infarction", probability: 0.1 },
  { code: "HMI", name: "History of MI", probability: 0.05 },
  { code: "HB", name: "Abnormal heartbeat", probability: 0.7234 },
  { code: "NORM", name: "Normal", probability: 0.1266 },
];

it("shows a meter with a percentage for each of the four classes, most probable first", () => {
  render(<ProbabilityBars probabilities={probabilities} />);
  const meters = screen.getAllByRole("meter");
  expect(meters.map((m) => m.getAttribute("aria-valuetext"))).toEqual(["72.3 %", "12.7 %", "10.0 %", "5.0 %"]);
  expect(meters[0]).toHaveAccessibleName("Abnormal heartbeat (HB)");
  expect(meters[3]).toHaveAccessibleName("History of MI (HMI)");
  expect(meters[0]).toHaveAttribute("aria-valuenow", "72.3");

  const rows = within(screen.getByRole("list", { name: "Probability of each class" })).getAllByRole("listitem");
  expect(rows.map((r) => r.textContent)).toEqual([
    "Abnormal heartbeat (HB)72.3 %",
    "Normal (NORM)12.7 %",
    "Myocardial infarction (MI)10.0 %",
    "History of MI (HMI)5.0 %",
  ]);
});
