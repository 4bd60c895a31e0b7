{#- At most `max_share` of the distinct values of a column are missing from `to`.`field` (a soft
    relationships test: a few SKUs missing from the catalogue are normal, many are a broken feed).
    Skipped while `to` is empty (sources without a catalogue). Offending rows: the missing values. -#}
{% test share_missing_below(model, column_name, to, field, max_share=0.05) %}

with observed as (

    select distinct {{ column_name }} as value
    from {{ model }}
    where {{ column_name }} is not null

),

reference as (

    select distinct {{ field }} as value from {{ to }} where {{ field }} is not null

),

missing as (

    select value from observed where value not in (select value from reference)

),

summary as (

    select
        (select count(*) from missing) as n_missing,
        (select count(*) from observed) as n_observed,
        (select count(*) from reference) as n_reference

)

select missing.value as missing_value, summary.n_missing, summary.n_observed
from missing
cross join summary
where summary.n_reference > 0
  and summary.n_missing > {{ max_share }} * summary.n_observed

{% endtest %}
