import { fireEvent, render, screen, waitFor, within } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { describe, expect, it, vi } from "vitest";
import App from "./App.jsx";

const CLASSES = [
  ["MI", "Myocardial infarction"],
  ["HMI", "History of myocardial infarction"],
  ["HB", "Abnormal heartbeat"],
  ["NORM", "Normal"],
];

const model = (synthetic) => ({
  loaded: true,
  model: "VGG16",
  run_id: "run42",
  version: "1",
  dataset: synthetic ? "synthetic-smoke" : "kaggle",
  synthetic,
  profile: "smoke",
  protocol: "dedup-split",
  metrics: { accuracy: 0.8125, precision: 0.8, recall: 0.8, f1: 0.8, ci95: { accuracy: [0.7, 0.9], f1: [0.7, 0.9] }, n_test: 80 },
  class_codes: CLASSES.map(([code]) => code),
  class_names: CLASSES.map(([, name]) => name),
  input_size: 64,
  preprocessing: {},
  page_gate: { rejects: "blank pages, photos, letters", threshold: 6.9, n_val: 13 },
  calibration: {
    calibrated: true,
    method: "temperature scaling",
    temperature: 1.42,
    fitted_on: "validation",
    n_val: 40,
    statement: "The probabilities are calibrated: temperature scaling (T = 1.42) fitted on the run's 40 validation pages.",
  },
});

const classification = (id, extra = {}) => ({
  id,
  created: "2026-11-20T10:15:00Z",
  filename: `ecg-${id}.jpg`,
  sha256: "ab".repeat(32),
  class_code: "MI",
  class_name: "Myocardial infarction",
  probabilities: CLASSES.map(([code, name], i) => ({ code, name, probability: [0.7, 0.1, 0.15, 0.05][i] })),
  model: { name: "VGG16", run_id: "run42", version: "1", dataset: "synthetic-smoke", synthetic: true },
  inference_ms: 123.4,
  total_ms: 310,
  image_url: `/api/v1/classifications/${id}/image/`,
  heatmap_url: `/api/v1/classifications/${id}/heatmap/`,
  ...extra,
});

const page = (results, extra = {}) => ({ count: results.length, next: null, previous: null, results, ...extra });

// A fake back end: routes "METHOD url" -> [status, body] or a function returning one.
function fakeServer(overrides = {}) {
  const routes = {
    "GET /api/v1/auth/csrf/": [200, { csrfToken: "tok123" }],
    "GET /api/v1/auth/me/": [200, { username: "dr.lee", is_staff: false }],
    "GET /api/v1/model/": [200, model(true)],
    "GET /api/v1/classifications/?page=1": [200, page([])],
    ...overrides,
  };
  const fetch = vi.fn(async (url, init = {}) => {
    const route = routes[`${init.method ?? "GET"} ${url}`];
    if (!route) throw new TypeError(`no fake route for ${init.method ?? "GET"} ${url}`);
    const [status, body] = typeof route === "function" ? await route(init) : route;
    return { ok: status >= 200 && status < 300, status, statusText: "", json: async () => body };
  });
  vi.stubGlobal("fetch", fetch);
  return fetch;
}

const callsTo = (fetch, method, url) => fetch.mock.calls.filter(([u, init = {}]) => u === url && (init.method ?? "GET") === method);

const ecgFile = () => new File(["fake jpeg bytes"], "patient-ecg.jpg", { type: "image/jpeg" });

describe("synthetic banner", () => {
  it("is shown when the model was trained on the synthetic twin", async () => {
    fakeServer();
    render(<App />);
    expect(await screen.findByText(/trained on SYNTHETIC ECG images/)).toBeInTheDocument();
    expect(screen.getByText(/Research tool — not for clinical diagnosis\./)).toBeInTheDocument();
    expect(screen.getByText(/test accuracy/)).toHaveTextContent("Model VGG16 · dataset synthetic-smoke · test accuracy 81.3 %");
  });

  it("is absent for a model trained on real ECGs", async () => {
    fakeServer({ "GET /api/v1/model/": [200, model(false)] });
    render(<App />);
    expect(await screen.findByText(/test accuracy/)).toHaveTextContent("dataset kaggle");
    expect(screen.queryByText(/SYNTHETIC/)).not.toBeInTheDocument();
    expect(screen.getByText(/Research tool — not for clinical diagnosis\./)).toBeInTheDocument();
  });

  it("gives way to a clear message when no model is installed", async () => {
    fakeServer({ "GET /api/v1/model/": [503, { error: "model_unavailable", detail: "No exported model found." }] });
    render(<App />);
    expect(await screen.findByRole("alert")).toHaveTextContent(
      "No trained model is installed on the server yet. Ask the administrator to run ./run_all.sh.Details: No exported model found.",
    );
  });
});

it("the model card says whether the probabilities are calibrated", async () => {
  fakeServer();
  render(<App />);
  expect(await screen.findByText(/probabilities are calibrated/)).toHaveTextContent(
    "The probabilities are calibrated: temperature scaling (T = 1.42) fitted on the run's 40 validation pages.",
  );
});

it("signs in with the CSRF token and shows the user", async () => {
  const fetch = fakeServer({
    "GET /api/v1/auth/me/": [403, { error: "not_authenticated", detail: "Authentication credentials were not provided." }],
    "POST /api/v1/auth/login/": [200, { username: "dr.lee", is_staff: false }],
  });
  const user = userEvent.setup();
  render(<App />);
  await user.type(await screen.findByLabelText("Username"), "dr.lee");
  await user.type(screen.getByLabelText("Password"), "s3cret");
  await user.click(screen.getByRole("button", { name: "Sign in" }));

  expect(await screen.findByText("dr.lee")).toBeInTheDocument();
  const [[, init]] = callsTo(fetch, "POST", "/api/v1/auth/login/");
  expect(init.headers["X-CSRFToken"]).toBe("tok123");
  expect(JSON.parse(init.body)).toEqual({ username: "dr.lee", password: "s3cret" });
});

it("uploads an ECG, shows the progress and then the result", async () => {
  let answer;
  const fetch = fakeServer({
    "POST /api/v1/classifications/": () => new Promise((resolve) => (answer = resolve)),
  });
  const user = userEvent.setup();
  render(<App />);
  await user.upload(await screen.findByLabelText(/Choose ECG image/), ecgFile());
  expect(screen.getByAltText("Preview of the chosen file patient-ecg.jpg")).toHaveAttribute("src", "blob:preview");
  await user.click(screen.getByRole("button", { name: "Analyse ECG" }));

  expect(screen.getByRole("status")).toHaveTextContent("Uploading and analysing the ECG image…");
  expect(screen.getByRole("button", { name: "Analysing…" })).toBeDisabled();
  const [[, init]] = callsTo(fetch, "POST", "/api/v1/classifications/");
  expect(init.headers["X-CSRFToken"]).toBe("tok123");
  expect(init.body.get("image").name).toBe("patient-ecg.jpg");

  answer([201, classification(7, { heatmap_png: "data:image/png;base64,iVBORw0KGgo=" })]);
  const result = await screen.findByRole("region", { name: "Result" });
  expect(screen.getByRole("status")).toHaveTextContent("Analysis complete: Myocardial infarction (MI).");
  expect(within(result).getByText("Myocardial infarction", { selector: "strong" })).toBeInTheDocument();
  expect(within(result).getAllByRole("meter")).toHaveLength(4);
  expect(within(result).getByText("70.0 %")).toBeInTheDocument();
  expect(within(result).getByAltText(/Grad-CAM heat map/)).toHaveAttribute("src", "data:image/png;base64,iVBORw0KGgo=");
  expect(within(result).getByText("Grad-CAM: regions that most influenced the prediction")).toBeInTheDocument();
  expect(within(result).getByAltText("Uploaded 12-lead ECG (ecg-7.jpg)")).toHaveAttribute("src", "/api/v1/classifications/7/image/");
  expect(within(result).getByText(/123 ms/)).toBeInTheDocument();
  await waitFor(() => expect(callsTo(fetch, "GET", "/api/v1/classifications/?page=1")).toHaveLength(2));
});

it("explains a rejected upload in plain words and keeps the server's detail", async () => {
  fakeServer({
    "POST /api/v1/classifications/": [400, { error: "invalid_image", detail: "cannot identify image file" }],
  });
  const user = userEvent.setup();
  render(<App />);
  const dropzone = (await screen.findByText(/drag and drop it here/)).closest(".dropzone");
  fireEvent.drop(dropzone, { dataTransfer: { files: [new File(["hello"], "notes.txt", { type: "text/plain" })] } });
  await user.click(screen.getByRole("button", { name: "Analyse ECG" }));

  const alert = await screen.findByRole("alert");
  expect(alert).toHaveTextContent("This file is not an ECG image we can read (use JPEG, PNG, WebP or TIFF).");
  expect(alert).toHaveTextContent("Details: cannot identify image file");
  expect(screen.queryByRole("region", { name: "Result" })).not.toBeInTheDocument();
});

it("says so when the upload is not an ECG page, and the model card says what is refused", async () => {
  fakeServer({
    "POST /api/v1/classifications/": [422, { error: "not_an_ecg", detail: "no ECG grid with traces was found" }],
  });
  const user = userEvent.setup();
  render(<App />);
  expect(await screen.findByText(/Only 12-lead ECG report pages are classified/)).toHaveTextContent(
    "Refused without a class: blank pages, photos, letters.",
  );
  await user.upload(screen.getByLabelText(/Choose ECG image/), new File(["cat"], "cat.jpg", { type: "image/jpeg" }));
  await user.click(screen.getByRole("button", { name: "Analyse ECG" }));

  const alert = await screen.findByRole("alert");
  expect(alert).toHaveTextContent("This image is not a 12-lead ECG report page, so it was not analysed.");
  expect(alert).toHaveTextContent("Details: no ECG grid with traces was found");
  expect(screen.queryByRole("region", { name: "Result" })).not.toBeInTheDocument();
});

it("reports a network failure during the upload", async () => {
  const fetch = fakeServer();
  const user = userEvent.setup();
  render(<App />);
  await user.upload(await screen.findByLabelText(/Choose ECG image/), ecgFile());
  await user.click(screen.getByRole("button", { name: "Analyse ECG" })); // no route: fetch rejects
  expect(await screen.findByRole("alert")).toHaveTextContent("The server could not be reached.");
  expect(callsTo(fetch, "POST", "/api/v1/classifications/")).toHaveLength(1);
});

it("pages through the history and opens an earlier result", async () => {
  const fetch = fakeServer({
    "GET /api/v1/classifications/?page=1": [200, page([classification(9), classification(8)], { count: 3, next: "?page=2" })],
    "GET /api/v1/classifications/?page=2": [200, page([classification(3)], { count: 3, previous: "?page=1" })],
  });
  const user = userEvent.setup();
  render(<App />);
  const history = await screen.findByRole("region", { name: "History" });
  await user.click(await within(history).findByRole("button", { name: /ecg-9\.jpg/ }));

  const result = screen.getByRole("region", { name: "Result" });
  expect(within(result).getByAltText(/Grad-CAM heat map/)).toHaveAttribute("src", "/api/v1/classifications/9/heatmap/");
  expect(within(history).getByRole("button", { name: /ecg-9\.jpg/ })).toHaveAttribute("aria-current", "true");

  await user.click(within(history).getByRole("button", { name: "Older →" }));
  expect(await within(history).findByRole("button", { name: /ecg-3\.jpg/ })).toBeInTheDocument();
  expect(within(history).getByText("Page 2 · 3 in total")).toBeInTheDocument();
  expect(callsTo(fetch, "GET", "/api/v1/classifications/?page=2")).toHaveLength(1);
});

it("goes back to the sign-in form when the session has ended elsewhere", async () => {
  fakeServer({
    "GET /api/v1/classifications/?page=1": [401, { error: "authentication_failed", detail: "Invalid token." }],
  });
  render(<App />);
  expect(await screen.findByRole("button", { name: "Sign in" })).toBeInTheDocument();
  expect(screen.getByRole("status")).toHaveTextContent("Your session has ended. Please sign in again.");
  expect(screen.queryByText(/Signed in as/)).not.toBeInTheDocument();
});

it("sends the current CSRF cookie and retries once with a fresh token after csrf_failed", async () => {
  document.cookie = "csrftoken=from-cookie";
  try {
    let posts = 0;
    const fetch = fakeServer({
      "POST /api/v1/classifications/": () =>
        ++posts === 1
          ? [403, { error: "csrf_failed", detail: "CSRF Failed: CSRF token from the 'X-Csrftoken' HTTP header incorrect." }]
          : [201, classification(5)],
    });
    const user = userEvent.setup();
    render(<App />);
    await user.upload(await screen.findByLabelText(/Choose ECG image/), ecgFile());
    await user.click(screen.getByRole("button", { name: "Analyse ECG" }));
    expect(await screen.findByRole("region", { name: "Result" })).toBeInTheDocument();
    const sent = callsTo(fetch, "POST", "/api/v1/classifications/").map(([, init]) => init.headers["X-CSRFToken"]);
    expect(sent).toEqual(["from-cookie", "tok123"]);
    expect(callsTo(fetch, "GET", "/api/v1/auth/csrf/")).toHaveLength(1);
  } finally {
    document.cookie = "csrftoken=; expires=Thu, 01 Jan 1970 00:00:00 GMT";
  }
});

it("deletes a result after confirmation and refreshes the history", async () => {
  const fetch = fakeServer({
    "GET /api/v1/classifications/?page=1": [200, page([classification(9)])],
    "DELETE /api/v1/classifications/9/": [204, null],
  });
  vi.stubGlobal("confirm", vi.fn(() => true));
  const user = userEvent.setup();
  render(<App />);
  const history = await screen.findByRole("region", { name: "History" });
  await user.click(await within(history).findByRole("button", { name: /ecg-9\.jpg/ }));
  await user.click(screen.getByRole("button", { name: "Delete this ECG" }));

  await waitFor(() => expect(screen.queryByRole("region", { name: "Result" })).not.toBeInTheDocument());
  expect(window.confirm).toHaveBeenCalledWith("Delete the ECG ecg-9.jpg and its result from the server?");
  const [[, init]] = callsTo(fetch, "DELETE", "/api/v1/classifications/9/");
  expect(init.headers["X-CSRFToken"]).toBe("tok123");
  await waitFor(() => expect(callsTo(fetch, "GET", "/api/v1/classifications/?page=1")).toHaveLength(2));
});
