// Words and numbers shown to people: server errors as sentences a clinician understands.

export const percent = (p) => `${(p * 100).toFixed(1)} %`;

const BY_CODE = {
  invalid_image: "This file is not an ECG image we can read (use JPEG, PNG, WebP or TIFF).",
  empty_file: "The file is empty. Please choose the ECG image again.",
  missing_file: "No image was received. Please choose an ECG image first.",
  too_large: "The file is too large. Please upload a smaller scan or photo of the ECG.",
  too_many_pixels: "The image has too many pixels. Please upload a lower-resolution scan of the ECG.",
  not_an_ecg:
    "This image is not a 12-lead ECG report page, so it was not analysed. Please upload a scan or photo of the whole ECG page.",
  animated_image: "Animated images cannot be analysed. Please upload a single still image of the ECG.",
  invalid_credentials: "The username or password is not correct.",
  model_unavailable: "No trained model is installed on the server yet. Ask the administrator to run ./run_all.sh.",
  throttled: "Too many requests — please wait a minute.",
  network_error: "The server could not be reached. Check the network connection and try again.",
};

const BY_STATUS = {
  0: BY_CODE.network_error,
  401: "Your session has ended. Please sign in again.",
  403: "Your session has ended or you are not allowed to do this. Please sign in again.",
  413: BY_CODE.too_large,
  422: BY_CODE.not_an_ecg,
  429: BY_CODE.throttled,
  503: BY_CODE.model_unavailable,
};

export function friendlyMessage(error) {
  return BY_CODE[error.code] ?? BY_STATUS[error.status] ??
    (error.status >= 500
      ? "The server ran into a problem. Please try again; if it keeps happening, tell the administrator."
      : "Something went wrong. Please try again.");
}
