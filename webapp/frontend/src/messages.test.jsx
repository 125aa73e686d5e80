import { render, screen } from "@testing-library/react";
import { describe, expect, it } from "vitest";
import { ApiError } from "./api.js";
import ErrorNotice from "./ErrorNotice.jsx";
import { friendlyMessage, percent } from "./messages.js";

describe("friendlyMessage", () => {
  it.each([
    ["invalid_image", 400, "This file is not an ECG image we can read (use JPEG, PNG, WebP or TIFF)."],
    ["too_large", 400, "The file is too large. Please upload a smaller scan or photo of the ECG."],
    ["too_many_pixels", 400, "The image has too many pixels. Please upload a lower-resolution scan of the ECG."],
    ["animated_image", 400, "Animated images cannot be analysed. Please upload a single still image of the ECG."],
    ["not_an_ecg", 422, "This image is not a 12-lead ECG report page, so it was not analysed. Please upload a scan or photo of the whole ECG page."],
    ["empty_file", 400, "The file is empty. Please choose the ECG image again."],
    ["model_unavailable", 503, "No trained model is installed on the server yet. Ask the administrator to run ./run_all.sh."],
    ["invalid_credentials", 400, "The username or password is not correct."],
  ])("maps the code %s", (code, status, sentence) => {
    expect(friendlyMessage(new ApiError(status, code, "server words"))).toBe(sentence);
  });

  it("falls back on the HTTP status when the code is unknown", () => {
    expect(friendlyMessage(new ApiError(429, "whatever", ""))).toBe("Too many requests — please wait a minute.");
    expect(friendlyMessage(new ApiError(413, "http_413", ""))).toMatch(/too large/);
    expect(friendlyMessage(new ApiError(503, "http_503", ""))).toMatch(/run \.\/run_all\.sh/);
    expect(friendlyMessage(new ApiError(403, "permission_denied", ""))).toMatch(/sign in again/);
    expect(friendlyMessage(new ApiError(502, "http_502", ""))).toMatch(/server ran into a problem/);
    expect(friendlyMessage(new ApiError(418, "teapot", ""))).toBe("Something went wrong. Please try again.");
  });

  it("explains network failures", () => {
    expect(friendlyMessage(new ApiError(0, "network_error", "Failed to fetch"))).toMatch(/could not be reached/);
  });
});

it("ErrorNotice shows the friendly sentence and the server's detail", () => {
  render(<ErrorNotice error={new ApiError(400, "animated_image", "Animated GIFs are not accepted.")} />);
  const alert = screen.getByRole("alert");
  expect(alert).toHaveTextContent("Animated images cannot be analysed.");
  expect(alert).toHaveTextContent("Details: Animated GIFs are not accepted.");
});

it("formats probabilities as percentages", () => {
  expect(percent(0.7234)).toBe("72.3 %");
  expect(percent(1)).toBe("100.0 %");
});
