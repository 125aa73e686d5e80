import "@testing-library/jest-dom/vitest";
import { cleanup } from "@testing-library/react";
import { afterEach, vi } from "vitest";

// jsdom has no object URLs; the upload preview only needs a string.
URL.createObjectURL = () => "blob:preview";
URL.revokeObjectURL = () => {};

afterEach(() => {
  cleanup();
  vi.unstubAllGlobals();
});
