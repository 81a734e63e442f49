"""Figure colors: one per method, stable across figures (the report's lines must be told apart)."""


def test_every_method_keeps_one_color_of_its_own_in_every_figure():
    from bench.report.figures import _palette
    from bench.report.util import DISPLAY_NAMES, FLOOR_METHOD

    everyone = _palette([*DISPLAY_NAMES, FLOOR_METHOD, "my-plugin"])
    colors = [tuple(everyone[m]) for m in [*DISPLAY_NAMES, "my-plugin"]]
    assert len(set(colors)) == len(colors)  # no two methods share a color (CRH and OrthoHash did)
    assert tuple(everyone[FLOOR_METHOD]) not in colors  # grey is the floor's alone
    # a figure with fewer methods colors each one as the full figure does
    few = _palette(["orthohash", "idch", "my-plugin"])
    assert all(tuple(few[m]) == tuple(everyone[m]) for m in ("orthohash", "idch", "my-plugin"))
