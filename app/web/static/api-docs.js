/* Starts the API reference pages (GET /docs: Swagger UI, GET /redoc: ReDoc) from a file, not an inline script:
 * the Content-Security-Policy allows scripts from the service's own files only. */
(function () {
  "use strict";
  var swagger = document.getElementById("swagger-ui");
  if (swagger && window.SwaggerUIBundle) {
    window.ui = window.SwaggerUIBundle({
      url: swagger.dataset.openapiUrl,
      dom_id: "#swagger-ui",
      layout: "BaseLayout",
      deepLinking: true,
      showExtensions: true,
      showCommonExtensions: true,
      validatorUrl: null, // the validator badge would ask a service on another site
      oauth2RedirectUrl: window.location.origin + swagger.dataset.oauth2RedirectUrl,
      presets: [window.SwaggerUIBundle.presets.apis, window.SwaggerUIBundle.SwaggerUIStandalonePreset],
    });
  }
  var redoc = document.getElementById("redoc");
  if (redoc && window.Redoc) {
    window.Redoc.init(redoc.dataset.openapiUrl, { nonce: redoc.dataset.nonce }, redoc);
  }
})();
