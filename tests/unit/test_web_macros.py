"""The dashboard's form macros (app/web/templates/macros.html) render what the API forms need."""

from __future__ import annotations

from app.web.render import TEMPLATES


def _field(**kwargs: object) -> str:
    macros = TEMPLATES.env.get_template("macros.html").module
    return str(macros.field(**kwargs))  # type: ignore[attr-defined]


def test_extra_attributes_reach_the_control_unescaped_and_values_escaped() -> None:
    html = _field(name="password", label="Initial password", type="password",
                  attrs={"autocomplete": "new-password", "minlength": "12"}, value='"><script>')
    assert 'autocomplete="new-password"' in html and 'minlength="12"' in html
    assert "<script>" not in html and "&#34;&gt;&lt;script&gt;" in html


def test_a_field_has_its_error_slot_named_by_its_body_key() -> None:
    html = _field(name="signature.meaning", label="Meaning", choices=["approved", "reviewed"], required=True)
    assert 'data-field="signature.meaning"' in html and 'name="signature.meaning"' in html
    assert 'id="f-signature-meaning"' in html and 'aria-describedby="f-signature-meaning-err"' in html
    assert html.count("<option") == 2  # required: no empty choice
