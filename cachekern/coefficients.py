"""TeaCache's published rescaling polynomials (np.poly1d order, highest power first), per model
family: f(x) turns the relative L1 change of the indicator into an estimate of the output's.

Source: ali-vilab/TeaCache at commit 7c10efc (see the project's reference notes). The fits are
meaningful only inside each model's calibration range; outside it they can turn negative or
explode, which is why TeaCache(clamp=True) exists.
"""

PUBLISHED = {
    "flux": [4.98651651e+02, -2.83781631e+02, 5.58554382e+01, -3.82021401e+00, 2.64230861e-01],
    "hunyuan_video": [7.33226126e+02, -4.01131952e+02, 6.75869174e+01, -3.14987800e+00,
                      9.61237896e-02],
    "ltx_video": [2.14700694e+01, -1.28016453e+01, 2.31279151e+00, 7.92487521e-01, 9.69274326e-03],
    "mochi": [-3.51241319e+03, 8.11675948e+02, -6.09400215e+01, 2.42429681e+00, 3.05291719e-03],
    "cogvideox": [-1.53880483e+03, 8.43202495e+02, -1.34363087e+02, 7.97131516e+00,
                  -5.23162339e-02],
    "wan": [2.39676752e+03, -1.31110545e+03, 2.01331979e+02, -8.29855975e+00, 1.37887774e-01],
}


def evaluate(coefficients, x: float) -> float:
    """Horner's rule in float64, as np.poly1d evaluates it on the host."""
    y = 0.0
    for c in coefficients:
        y = y * x + float(c)
    return y
